"""Fetching checkpoints into the cache, with clipkit owning integrity: ``fetch(source, cache_dir=...)``.

The stages, one module each: ``settings`` (environment knobs, offline mode),
``sources`` (schemes, local paths, the expected digest), ``cache`` (where a
source's file goes, typed cache I/O errors, read-only caches), ``records``
(verified records, ``forget``), ``hashing`` (SHA-256 checks), ``transports``
(``http``, ``fsspec``), ``download`` (part file, retries, atomic rename, lock)
and ``fetcher`` (``fetch`` itself). docs/fetching.md explains the cache layout,
digests, retries and the environment variables.
"""

from __future__ import annotations

from clipkit.fetching.cache import META_DIR, PART_SUFFIX, cache_path, lock_path, record_path
from clipkit.fetching.fetcher import fetch
from clipkit.fetching.hashing import sha256_file, verify_file
from clipkit.fetching.records import VerifiedRecord, forget, read_record
from clipkit.fetching.settings import FetchSettings, cache_only, is_offline
from clipkit.fetching.sources import (
    HTTP_SCHEMES,
    S3_SCHEMES,
    ResolvedSource,
    digest_in_path,
    is_fsspec_url,
    local_path_of,
    resolve_digest,
    url_scheme,
)

__all__ = [
    "HTTP_SCHEMES",
    "META_DIR",
    "PART_SUFFIX",
    "S3_SCHEMES",
    "FetchSettings",
    "ResolvedSource",
    "VerifiedRecord",
    "cache_only",
    "cache_path",
    "digest_in_path",
    "fetch",
    "forget",
    "is_fsspec_url",
    "is_offline",
    "local_path_of",
    "lock_path",
    "read_record",
    "record_path",
    "resolve_digest",
    "sha256_file",
    "url_scheme",
    "verify_file",
]
