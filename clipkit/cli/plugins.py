"""``clipkit plugins``: every plugin, where it came from, and its hooks."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    """List the registered plugins (as JSON with ``--json``)."""
    from clipkit.plugins import get_registry

    infos = get_registry().infos()
    if args.json:
        print(json.dumps([{"name": i.name, "origin": i.origin, "hooks": list(i.hooks), "error": i.error} for i in infos], indent=2))
        return 0
    for info in infos:
        if info.error and info.error.startswith("disabled"):
            print(f"{info.name}  [{info.origin}]  {info.error}")
        elif info.error:
            print(f"{info.name}  [{info.origin}]  FAILED: {info.error}")
        else:
            print(f"{info.name}  [{info.origin}]  {', '.join(info.hooks)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plugins`` subcommand to ``sub``."""
    p = sub.add_parser("plugins", help="list registered plugins, where they came from, and their hooks")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=run)
