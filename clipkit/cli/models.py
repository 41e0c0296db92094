"""``clipkit models``: the model names clipkit.load accepts, and which of them are cached."""

from __future__ import annotations

import argparse
import json

from clipkit.cli._table import format_size, format_table


def _cached_size(url: str, sha256: str | None, cache: object) -> int | None:
    from clipkit import fetching
    from clipkit.errors import ConfigurationError

    try:
        path = fetching.cache_path(url, cache, sha256=sha256)
    except ConfigurationError:  # a URL without a file name is never cached by name
        return None
    return path.stat().st_size if path.is_file() else None


def run(args: argparse.Namespace) -> int:
    """Print a table of the registered names, whether each is in the cache and its size there (``--json``: a list)."""
    from clipkit.loader import cache_dir, registered_models

    cache = cache_dir(args.download_root)
    rows = []
    for name, source in registered_models().items():
        rows.append({"name": name, "cached": (size := _cached_size(source.url, source.sha256, cache)) is not None,
                     "size": size, "url": source.url})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["name", "cached", *(["url"] if args.urls else [])]
    table = [[row["name"], format_size(row["size"]) if row["cached"] else "-", *([row["url"]] if args.urls else [])]
             for row in rows]
    print(format_table(header, table))
    print(f"\ncache: {cache} ({sum(row['cached'] for row in rows)} of {len(rows)} cached)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand to ``sub``."""
    p = sub.add_parser("models", help="list the model names clipkit.load accepts, which are cached and their sizes")
    p.add_argument("--urls", action="store_true", help="also print each model's URL")
    p.add_argument("--json", action="store_true", help="print as JSON (name, cached, size in bytes, url)")
    p.add_argument("--download-root", help="cache directory (default: $CLIPKIT_CACHE or ~/.cache/clip)")
    p.set_defaults(func=run)
