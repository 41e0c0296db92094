"""``clipkit models``: the model names clipkit.load accepts."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """List the registered model names (with ``--urls``, their URLs too)."""
    from clipkit.loader import registered_models

    for name, source in registered_models().items():
        print(f"{name}\t{source.url}" if args.urls else name)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand to ``sub``."""
    p = sub.add_parser("models", help="list the model names clipkit.load accepts")
    p.add_argument("--urls", action="store_true", help="also print each model's URL")
    p.set_defaults(func=run)
