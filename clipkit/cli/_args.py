"""Arguments several ``clipkit`` subcommands share."""

from __future__ import annotations

import argparse


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """Add the checkpoint ``source`` positional and its ``--download-root`` / ``--sha256`` options."""
    parser.add_argument("source", help="a model name, a local path, or a URL (https://, s3://, file://, ...)")
    parser.add_argument("--download-root", help="cache directory (default: $CLIPKIT_CACHE or ~/.cache/clip)")
    parser.add_argument("--sha256", help="expected SHA-256 of the checkpoint file")
