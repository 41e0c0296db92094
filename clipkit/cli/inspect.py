"""``clipkit inspect``: the detected architecture of a checkpoint, without building it."""

from __future__ import annotations

import argparse
import json

from clipkit.cli._args import add_source_args


def run(args: argparse.Namespace) -> int:
    """Print the checkpoint's ``ArchSpec`` (as JSON with ``--json``)."""
    from clipkit.loader import inspect

    spec = inspect(args.source, download_root=args.download_root, sha256=args.sha256)
    if args.json:
        print(json.dumps({"class": type(spec).__name__, **spec.to_dict()}, indent=2))
    else:
        print(repr(spec))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` subcommand to ``sub``."""
    p = sub.add_parser("inspect", help="print the architecture (ArchSpec) of a checkpoint without building it")
    add_source_args(p)
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.set_defaults(func=run)
