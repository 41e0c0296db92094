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

import importlib
from typing import Any

#: each public name and the stage module it lives in; a stage is imported when one of its names is first
#: used, so ``import clipkit`` (and a local-file load) never imports the download machinery (filelock, ...)
_STAGES: dict[str, str] = {
    **dict.fromkeys(("META_DIR", "PART_SUFFIX", "cache_path", "lock_path", "record_path"), "cache"),
    "fetch": "fetcher",
    **dict.fromkeys(("sha256_file", "verify_file"), "hashing"),
    **dict.fromkeys(("VerifiedRecord", "forget", "read_record"), "records"),
    **dict.fromkeys(("FetchSettings", "cache_only", "is_offline"), "settings"),
    **dict.fromkeys(
        ("HTTP_SCHEMES", "S3_SCHEMES", "ResolvedSource", "digest_in_path", "is_fsspec_url", "local_path_of",
         "resolve_digest", "url_scheme"),
        "sources",
    ),
}


def __getattr__(name: str) -> Any:
    stage = _STAGES.get(name)
    if stage is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{stage}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_STAGES])


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
