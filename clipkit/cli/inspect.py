"""``clipkit inspect``: the detected architecture of a checkpoint, without building it."""

from __future__ import annotations

import argparse
import json

from clipkit.cli._args import add_source_args
from clipkit.cli._table import format_table


def run(args: argparse.Namespace) -> int:
    """Print the checkpoint's ``ArchSpec`` as a table of fields (as JSON with ``--json``)."""
    from clipkit.loader import inspect

    spec = inspect(args.source, download_root=args.download_root, sha256=args.sha256)
    fields = spec.to_dict()
    fields = {"family": fields.pop("family"), **fields}
    if args.json:
        print(json.dumps({"class": type(spec).__name__, **fields}, indent=2))
        return 0
    print(f"{args.source}: {type(spec).__name__}\n")
    print(format_table(["field", "value"], [[name, _value(value)] for name, value in fields.items()]))
    return 0


def _value(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(str(item) for item in value)
    return str(value)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` subcommand to ``sub``."""
    p = sub.add_parser("inspect", help="print the architecture (ArchSpec) of a checkpoint without building it")
    add_source_args(p)
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.set_defaults(func=run)
