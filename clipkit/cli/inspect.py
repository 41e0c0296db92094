"""``clipkit inspect``: the detected architecture of a checkpoint, without building it."""

from __future__ import annotations

import argparse
import json

from clipkit.cli._args import add_source_args
from clipkit.cli._table import format_table
from clipkit.fetching.redact import redact_url


def run(args: argparse.Namespace) -> int:
    """Print the checkpoint's ``ArchSpec`` as a table of fields and where each value came from (JSON with ``--json``)."""
    from clipkit.loader import inspect

    spec = inspect(args.source, download_root=args.download_root, sha256=args.sha256)
    fields = spec.to_dict()
    fields = {"family": fields.pop("family"), **fields}
    origin = _weights_origin(args.source)
    sources = {name: str(spec.provenance_of(name)) for name in fields}
    if args.json:
        print(json.dumps({"class": type(spec).__name__, **fields, **origin, "provenance": sources}, indent=2))
        return 0
    print(f"{redact_url(args.source)}: {type(spec).__name__}\n")
    print(format_table(["field", "value", "from"], [[name, _value(value), sources[name]] for name, value in fields.items()]))
    if origin:
        print("\n" + "\n".join(f"{key.replace('_', ' ')}: {value}" for key, value in origin.items()))
    return 0


def _weights_origin(source: str) -> dict[str, str]:
    """Which source served a registered name, and which files of a multi-format directory were read and why."""
    from pathlib import Path

    from clipkit.layouts import choose_checkpoint
    from clipkit.model_sources import last_served

    origin: dict[str, str] = {}
    from clipkit.fetching.hub import find_cached, is_hub_source

    served = last_served(source)
    path = served.path if served is not None else Path(source).expanduser()
    if served is None and is_hub_source(source):
        path = find_cached(source) or path
    if served is not None:
        origin["weights_from"] = f"{served.source} ({'cached copy' if served.cached else 'downloaded'})"
        failed = [f"{a.source}: {a.outcome}" for a in served.attempts if not a.outcome.startswith("not cached")]
        if failed:
            origin["tried_first"] = "; ".join(failed)
    if path.is_dir():
        choice = choose_checkpoint(p.name for p in path.iterdir() if p.is_file())
        if choice is not None:
            origin["files_read"] = f"{', '.join(choice.files)}: {choice.why}"
    return origin


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
