"""``clipkit fetch``: download and verify a checkpoint into the cache; print its path."""

from __future__ import annotations

import argparse

from clipkit.cli._args import add_source_args


def run(args: argparse.Namespace) -> int:
    """Resolve ``args.source`` to a verified local file (downloading it if needed) and print its path."""
    import os

    from clipkit import fetching
    from clipkit.loader import cache_dir, registered_models, resolve_source

    if args.quiet:
        os.environ["CLIPKIT_PROGRESS"] = "0"
    source, sha256 = args.source, args.sha256
    if args.verify or args.force:
        entry = registered_models().get(source)
        if entry is not None:
            source, sha256 = entry.url, sha256 or entry.sha256
        if fetching.is_fsspec_url(source):
            print(fetching.fetch(source, cache_dir=cache_dir(args.download_root), sha256=sha256,
                                 force_verify=args.verify, force_download=args.force))
            return 0
    print(resolve_source(source, download_root=args.download_root, sha256=sha256))
    _report_source(args.source)
    return 0


def _report_source(name: str) -> None:
    """On stderr (stdout is the path), which source served a registered name's weights."""
    import sys

    from clipkit.model_sources import last_served

    served = last_served(name)
    if served is not None:
        print(f"clipkit: {served.describe()}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``fetch`` subcommand to ``sub``."""
    p = sub.add_parser("fetch", help="download and verify a checkpoint into the cache; print its path")
    add_source_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--verify", action="store_true", help="hash the cached file even if clipkit verified it before")
    p.add_argument("--force", action="store_true", help="download again even if the file is cached")
    p.set_defaults(func=run)
