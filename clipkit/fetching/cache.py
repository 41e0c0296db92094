"""The cache directory: where each source's file goes, the ``.clipkit`` side files, typed I/O errors, read-only caches."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import posixpath
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipkit import releases
from clipkit.errors import ConfigurationError, FetchError, OfflineError
from clipkit.fetching import hashing
from clipkit.fetching.hashing import checksum_error
from clipkit.fetching.settings import is_offline
from clipkit.fetching.redact import redact_url
from clipkit.fetching.sources import HTTP_SCHEMES, S3_SCHEMES, resolve_digest, url_path, url_scheme

META_DIR = ".clipkit"
PART_SUFFIX = ".part"


def _endpoint_of(scheme: str | None, storage_options: Mapping[str, Any]) -> str | None:
    endpoint = storage_options.get("endpoint_url") or (storage_options.get("client_kwargs") or {}).get("endpoint_url")
    if endpoint is None and scheme in S3_SCHEMES:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return str(endpoint) if endpoint else None


def cache_path(
    location: str,
    cache_dir: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    sha256: str | None = None,
) -> Path:
    """Where ``fetch(location, sha256=sha256, ...)`` caches ``location`` inside ``cache_dir``.

    ``location`` may carry a ``#sha256=`` fragment and the digest is resolved as
    ``fetch`` does (argument, fragment, 64-hex last directory). An official
    release (its file name with its own digest) keeps the bare file name, the
    reference's layout; any other source with a digest gets
    ``<stem>-<12 hex of the digest><suffix>``, and one without gets
    ``<stem>-<12 hex of SHA-256(URL and object-store endpoint)><suffix>``, so
    neither two contents nor two URLs ever share a cache entry. The name comes
    from the redacted URL (``redact_url``): no secret is ever part of a file name. Raises
    ``ConfigurationError`` for a malformed digest or a URL without a file name.
    """
    resolved = resolve_digest(os.fspath(location), sha256)
    return slot(resolved.location, Path(cache_dir).expanduser(), storage_options or {}, resolved.sha256)


def slot(location: str, cache_dir: Path, storage_options: Mapping[str, Any], digest: str | None) -> Path:
    """``cache_path`` for a location whose digest is already resolved (``None``: the URL names the slot)."""
    # named from the redacted URL: a query, ;param or fragment value (tokens, signatures) never names a file
    raw = posixpath.basename(url_path(redact_url(location)))
    if "?" in raw and "=" in raw.split("?", 1)[1]:
        raw = raw.split("?", 1)[0]
    if url_scheme(location) in HTTP_SCHEMES:
        raw = raw.split(";", 1)[0]  # path parameters are not part of the file's name
    name = urllib.parse.unquote(raw).replace("/", "_").replace("\\", "_").replace("\x00", "_")
    if name in ("", ".", "..") or name.startswith("."):
        raise ConfigurationError(
            f"{location!r} does not end in a file name clipkit can cache; give the URL of the checkpoint file itself"
        )
    if digest is not None and (digest, name) in releases.OFFICIAL_FILES:
        return cache_dir / name
    if digest is not None:
        tag = digest[:12]
    else:
        key = location
        endpoint = _endpoint_of(url_scheme(location), storage_options)
        if endpoint:
            key = f"{key}\n{endpoint}"
        tag = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    stem, suffix = os.path.splitext(name)
    if len(suffix) > 16:
        stem, suffix = name, ""
    return cache_dir / f"{stem[:160]}-{tag}{suffix}"


def meta_dir(target: Path) -> Path:
    """The ``.clipkit`` folder beside ``target``: its record, lock and part files."""
    return target.parent / META_DIR


def record_path(target: Path) -> Path:
    """The verified-record file kept for the cached file ``target``."""
    return meta_dir(target) / f"{target.name}.json"


def lock_path(target: Path) -> Path:
    """The lock file that serialises downloads of ``target`` across processes."""
    return meta_dir(target) / f"{target.name}.lock"


def remove_stale_parts(target: Path) -> None:
    """Delete partial downloads of ``target`` left by killed processes (call only while holding its lock)."""
    meta, name = glob.escape(str(meta_dir(target))), glob.escape(target.name)
    # exactly the random tags download.new_part and records.write_record use, so another target's files never match
    for pattern in (f"{name}.{'?' * 12}{PART_SUFFIX}", f"{name}.json.{'?' * 8}.tmp"):
        for leftover in glob.glob(os.path.join(meta, pattern)):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def cache_error(exc: OSError, cache_dir: Path, *, action: str, source: str | None = None,
                needed: int | None = None) -> ConfigurationError | FetchError:
    """The typed error for an ``OSError`` met while writing in the cache directory ``cache_dir``."""
    what = f" while fetching {source}" if source else ""
    if exc.errno in NOT_WRITABLE:
        return ConfigurationError(
            f"the cache directory {cache_dir} is not writable: could not {action}{what} "
            f"({exc.strerror or exc}); pass a writable download_root= or set $CLIPKIT_CACHE"
        )
    if exc.errno in _NO_SPACE:
        size = f" (the file is {needed} bytes)" if needed else ""
        return FetchError(
            f"no space left in the cache directory {cache_dir}{what}{size}: could not {action}; free some "
            f"space there, or pass download_root= / set $CLIPKIT_CACHE to a disk with room",
            source=source,
        )
    return FetchError(
        f"could not {action} in the cache directory {cache_dir}{what} ({type(exc).__name__}: {exc}); "
        f"check that disk, or pass download_root= / set $CLIPKIT_CACHE to another directory",
        source=source,
    )


class NotWritable(Exception):
    """The cache directory (or its ``.clipkit``) cannot be written: only files already there can be served."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def prepare_cache_dir(cache_dir: Path) -> None:
    """Create ``cache_dir/.clipkit``; raise ``NotWritable`` when permissions or a read-only mount forbid it."""
    try:
        (cache_dir / META_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in NOT_WRITABLE:
            raise NotWritable(exc) from None
        raise ConfigurationError(
            f"cannot create the cache directory {cache_dir / META_DIR} ({exc.strerror or exc}); pass a writable "
            f"download_root= or set $CLIPKIT_CACHE"
        ) from None


def serve_read_only(targets: list[Path], expected: str | None, *, source: str, why: NotWritable,
                    force_download: bool) -> Path:
    """Serve ``source`` from a cache directory clipkit cannot write to: the first of ``targets`` there that hashes to
    ``expected`` (no record is written), or, without a digest, the first present as it is."""
    target = targets[0]
    reason = f"{target.parent} is not writable ({why.error.strerror or why.error})"
    present = [path for path in targets if path.is_file()]
    if force_download or not present:
        if is_offline() and not force_download:
            raise OfflineError(
                f"{source} is not in the cache ({target} does not exist), and CLIPKIT_OFFLINE is set, so it was "
                f"not downloaded; fetch it once while online into a writable cache, or unset CLIPKIT_OFFLINE",
                source=source,
            )
        what = "downloaded again" if force_download else f"downloaded (it is not in the cache: no {target.name})"
        raise ConfigurationError(
            f"{source} cannot be {what}: the cache directory {reason}; pass a writable download_root= or set "
            f"$CLIPKIT_CACHE"
        )
    if expected is None:
        return present[0]  # nothing to check it against: served as it is, like any cached file of that URL
    mismatch = None
    for path in present:
        actual = hashing.sha256_file(path)
        if actual == expected:
            return path
        mismatch = mismatch or (path, actual)
    path, actual = mismatch
    raise checksum_error(source, expected, actual,
                         f"The cached file {path} is another file, and it cannot be replaced because "
                         f"{reason}; pass a writable download_root= or set $CLIPKIT_CACHE.")
