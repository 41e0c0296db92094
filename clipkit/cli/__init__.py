"""The ``clipkit`` command: list models and plugins, inspect, fetch, load and export checkpoints; embed and classify collections.

Each subcommand lives in its own module of this package with a ``register(sub)``
that adds its parser and a ``run(args)`` that does the work; ``COMMANDS`` lists
them in the order ``clipkit --help`` shows them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from clipkit.cli import batch, export, fetch, inspect, load, models, plugins
from clipkit.errors import ClipkitError

COMMANDS = (models, inspect, plugins, fetch, load, export, batch)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``clipkit`` and its subcommands."""
    parser = argparse.ArgumentParser(prog="clipkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``clipkit`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    clipkit's own errors print one clear line on stderr and exit with status 2.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClipkitError as exc:
        print(f"clipkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
