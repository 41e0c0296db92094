"""``clipkit models``: the model names clipkit.load accepts, their sources, and which copy is cached."""

from __future__ import annotations

import argparse
import json

from clipkit.cli._table import format_size, format_table


def _label(source: str, kind: str) -> str:
    return kind if kind in ("original", "mirror") else source


def run(args: argparse.Namespace) -> int:
    """Print a table of the registered names: the cached copy's size and source, and every source (``--json``: a list)."""
    from clipkit.loader import cache_dir, registered_models
    from clipkit.model_sources import cached_sources

    cache = cache_dir(args.download_root)
    rows = []
    for name, entry in registered_models().items():
        listed = cached_sources(entry, cache)
        hit = next(((candidate, path) for candidate, path in listed if path is not None), None)
        rows.append({
            "name": name,
            "cached": hit is not None,
            "size": hit[1].stat().st_size if hit else None,
            "cached_from": hit[0].source if hit else None,
            "url": entry.url,
            "sources": [{"source": c.source, "kind": c.kind, "cached": path is not None, "skipped": c.note or None}
                        for c, path in listed],
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["name", "cached", "sources (* cached, - needs a plugin)", *(["url"] if args.urls else [])]
    table = []
    for row in rows:
        labels = [_label(s["source"], s["kind"]) + ("*" if s["cached"] else "-" if s["skipped"] else "")
                  for s in row["sources"]]
        table.append([row["name"], format_size(row["size"]) if row["cached"] else "-", ", ".join(labels),
                      *([row["url"]] if args.urls else [])])
    print(format_table(header, table))
    print(f"\ncache: {cache} ({sum(row['cached'] for row in rows)} of {len(rows)} cached; the reference's "
          f"~/.cache/clip and the Hugging Face cache are looked at too)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand to ``sub``."""
    p = sub.add_parser("models", help="list the model names clipkit.load accepts, their sources and what is cached")
    p.add_argument("--urls", action="store_true", help="also print each model's URL")
    p.add_argument("--json", action="store_true",
                   help="print as JSON (name, cached, size in bytes, cached_from, url, sources)")
    p.add_argument("--download-root", help="cache directory (default: $CLIPKIT_CACHE or ~/.cache/clip)")
    p.set_defaults(func=run)
