"""Fetches http(s)://, s3:// and file:// URLs, and any other fsspec protocol, into the cache with SHA-256 checks.

Two ``fetch_checkpoint`` implementations, both thin (and ``forget_checkpoint``, which
drops an unverified download that turned out not to be a checkpoint): the work (digest
resolution, cache, lock, retries, verification) is ``clipkit.fetching.fetch``.
``fetch_checkpoint`` answers for the schemes clipkit supports first-hand;
``fetch_with_fsspec`` is ``trylast`` and answers for every other protocol fsspec
knows (``memory://``, ``gcs://``, chained ``simplecache::...`` URLs), so a
plugin that handles one of those itself is always asked before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipkit import fetching
from clipkit.hookspecs import hookimpl

FIRST_HAND_SCHEMES = fetching.HTTP_SCHEMES | fetching.S3_SCHEMES | {"file"}


@hookimpl
def fetch_checkpoint(
    source: str, cache_dir: Path, sha256: str | None, storage_options: Mapping[str, Any] | None
) -> Path | None:
    """Fetch ``http(s)://``, ``s3://`` and ``file://`` sources; ``None`` for any other scheme."""
    if fetching.url_scheme(source) not in FIRST_HAND_SCHEMES:
        return None
    return fetching.fetch(source, cache_dir=cache_dir, sha256=sha256, storage_options=storage_options)


@hookimpl
def forget_checkpoint(source: str, path: Path, sha256: str | None) -> bool | None:
    """Remove a download no digest vouched for (neither ``sha256`` nor the URL carries one); ``None`` otherwise."""
    if fetching.url_scheme(source) not in FIRST_HAND_SCHEMES and not fetching.is_fsspec_url(source):
        return None
    if sha256 is not None or fetching.resolve_digest(source).sha256 is not None:
        return None  # the publisher's own bytes: downloading them again would not help
    return fetching.forget(path) or None


@hookimpl(trylast=True, specname="fetch_checkpoint")
def fetch_with_fsspec(
    source: str, cache_dir: Path, sha256: str | None, storage_options: Mapping[str, Any] | None
) -> Path | None:
    """Fetch any other URL whose protocol fsspec knows; ``None`` for plain paths and unknown protocols."""
    if fetching.url_scheme(source) in FIRST_HAND_SCHEMES or not fetching.is_fsspec_url(source):
        return None
    return fetching.fetch(source, cache_dir=cache_dir, sha256=sha256, storage_options=storage_options)
