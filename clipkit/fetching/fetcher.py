"""``fetch``: a local path for any source, served in place, from the cache, or downloaded once into it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipkit.errors import CheckpointNotFoundError, ClipkitError, OfflineError
from clipkit.fetching.cache import NotWritable, prepare_cache_dir, remove_stale_parts, serve_read_only, slot
from clipkit.fetching.download import download_to, target_lock
from clipkit.fetching.hashing import verify_file
from clipkit.fetching.records import lookup, quick_hit
from clipkit.fetching.redact import redact_url, scrub, secrets_of
from clipkit.fetching.settings import FetchSettings, is_offline, progress_enabled
from clipkit.fetching.sources import digest_in_path, local_path_of, resolve_digest
from clipkit.fetching.transports import transport_for
from clipkit.inputs import check_regular_file


def fetch(
    source: str,
    *,
    cache_dir: str | os.PathLike[str],
    sha256: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    force_verify: bool = False,
    force_download: bool = False,
) -> Path:
    """Return a local path holding ``source``'s bytes, downloading it into ``cache_dir`` if needed, verified.

    ``source`` is a URL (``https://``, ``s3://``, ``file://``, any fsspec
    protocol) or a local path; its digest is ``sha256``, else a ``#sha256=``
    fragment, else a 64-hex last directory in the URL (see ``resolve_digest``).
    Local files are returned in place (checked when a digest is known). Remote
    ones are served from the cache when the verified record still matches
    (``force_verify=True`` hashes the file anyway; ``force_download=True``
    ignores any cached copy and downloads again, still atomically and verified),
    otherwise downloaded once across processes with retries, resumption and a
    progress bar (``progress``: ``None`` = when stderr is a terminal). A cache
    directory that cannot be written serves the files already in it, each
    hashed against the expected digest on every call (served as it is when no
    digest is known); only a download needs a writable cache. Raises
    ``ChecksumError``, ``SourceNotFoundError``, ``AccessDeniedError``,
    ``OfflineError`` (with ``CLIPKIT_OFFLINE=1`` and nothing cached),
    ``FetchError`` (also for a full disk) or ``ConfigurationError`` (also for a
    cache that cannot be written when a download is needed). Credentials in
    the URL (userinfo, query values) never appear in an error, the progress
    bar, the cache file's name or its record: they show as ``***``.
    """
    url = os.fspath(source)
    try:
        return _fetch(url, cache_dir=cache_dir, sha256=sha256, storage_options=storage_options, progress=progress,
                      force_verify=force_verify, force_download=force_download)
    except ClipkitError as exc:
        if not secrets_of(url) and "@" not in url:
            raise
        exc.args = tuple(scrub(a, url) if isinstance(a, str) else a for a in exc.args)
        if isinstance(getattr(exc, "source", None), str):
            exc.source = scrub(exc.source, url)  # type: ignore[attr-defined]
        raise exc.with_traceback(exc.__traceback__) from None  # the causes may quote the raw URL


def _fetch(
    source: str,
    *,
    cache_dir: str | os.PathLike[str],
    sha256: str | None,
    storage_options: Mapping[str, Any] | None,
    progress: bool | None,
    force_verify: bool,
    force_download: bool,
) -> Path:
    resolved = resolve_digest(source, sha256)
    location, expected = resolved.location, resolved.sha256
    local = local_path_of(location)
    if local is not None:
        if not local.exists():
            raise CheckpointNotFoundError(f"checkpoint not found: {local} (from {source})")
        check_regular_file(local)  # hashing a FIFO or /dev/zero would never end
        return verify_file(local, expected, source=source) if expected else local

    storage_options = dict(storage_options or {})
    settings = FetchSettings.from_env()
    source = redact_url(source)  # what messages, the progress bar and the cache record show from here on
    transport = transport_for(location, source, storage_options, settings)  # checks options; no I/O yet
    cache_dir = Path(cache_dir).expanduser()
    target = slot(location, cache_dir, storage_options, expected)
    # the same URL fetched earlier without a digest: served when its record holds this very digest
    plain = slot(location, cache_dir, storage_options, None) if expected and not digest_in_path(location) else None
    if not (force_verify or force_download):
        if quick_hit(target, expected):
            return target
        if plain is not None and quick_hit(plain, expected):
            return plain

    show = progress_enabled(progress)
    try:
        prepare_cache_dir(cache_dir)
        with target_lock(target, source=source, progress=show):
            if not force_download:
                found = lookup(target, expected, source=source, force_verify=force_verify)
                if found.hit:
                    return target
                if is_offline():
                    raise OfflineError(
                        f"{source} is not in the cache ({found.why}), and CLIPKIT_OFFLINE is set, so it was not "
                        f"downloaded; fetch it once while online (clipkit fetch SOURCE) or unset CLIPKIT_OFFLINE",
                        source=source,
                    )
            elif is_offline():
                raise OfflineError(
                    f"{source} cannot be downloaded again: CLIPKIT_OFFLINE is set; unset it to refresh the cache",
                    source=source,
                )
            remove_stale_parts(target)
            download_to(transport, target, source=source, expected=expected, settings=settings, progress=show)
    except NotWritable as why:
        candidates = [target] if plain is None else [target, plain]
        return serve_read_only(candidates, expected, source=source, why=why, force_download=force_download)
    return target
