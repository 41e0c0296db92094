"""Fetching checkpoints into the cache, with clipkit owning integrity.

One code path serves every transport: the bytes stream into a temp file in the
cache directory while they are hashed (one pass, no re-read), the digest is
checked, the file is fsync'd and renamed into place, and a *verified record*
(size, mtime, ctime, inode, SHA-256) is written beside it so that a later cache
hit is trusted without hashing the file again. A record that no longer matches
the file means the file was changed after clipkit verified it: it is hashed
again and, if its content changed, removed and refused with ``ChecksumError``.

Transports:

* ``http://`` and ``https://`` use the standard library (``urllib``) directly:
  every status code, ``Retry-After``, ``Range``/``Content-Range`` and the socket
  read timeout (a stalled transfer) are visible and under our control, which
  fsspec's aiohttp file hides behind its own block cache and retries.
* ``s3://`` (s3fs) and every other fsspec protocol (``memory://``, ``gcs://``,
  chained ``simplecache::...`` URLs) go through ``fsspec``; a resumed read is a
  ``seek``. ``storage_options`` are passed to the filesystem (for s3, the read
  timeout below becomes botocore's unless ``config_kwargs`` sets its own);
  credentials and endpoint otherwise come the standard AWS way (environment
  including ``AWS_ENDPOINT_URL``, ``~/.aws`` files), resolved by botocore.
* ``file://`` URLs and plain paths are used in place, never copied; their digest
  is checked when one is known, and a mismatch never deletes the user's file.

The expected digest comes from, in order: the ``sha256=`` argument, a
``#sha256=<hex>`` URL fragment, then the URL path when its last directory is 64
hex digits (``.../<sha256>/<file>``, the official release layout). The argument
and the fragment are both statements by the caller: if they disagree the call is
refused with ``ConfigurationError`` before any network access. The path digest is
only an inference from a directory name, so an explicit digest overrides it.

Cache layout, inside ``cache_dir``:

* ``<file>`` for the nine official releases only (file name and digest both
  those of a release in ``clipkit.builtin.models``), so the reference's downloads
  (``~/.cache/clip/ViT-B-32.pt``) are reused, whichever mirror serves them;
* ``<stem>-<first 12 hex of the expected SHA-256><suffix>`` for every other
  source whose digest is known (argument, fragment or URL path): the slot is
  bound to one content, so two checkpoints called ``open_clip_model.pt`` with
  different digests never share a file, and a file another process is about to
  open is never replaced by one with another digest;
* ``<stem>-<12 hex of SHA-256(URL)><suffix>`` for a URL without any digest, so
  two different URLs ending in ``model.pt`` never share a file (the suffix is
  kept for format detection; for s3 and other fsspec URLs the endpoint is part
  of the hashed key). A fetch of that URL *with* a digest also accepts this
  slot when its verified record holds that very digest;
* ``.clipkit/<file>.json`` (verified record), ``.clipkit/<file>.lock`` (one lock
  per target, so N processes download once) and ``.clipkit/<file>.<random>.part``
  (a download in progress; never trusted, removed by the next fetch of the same
  target once it holds the lock).

A file clipkit has no record of (the reference's download) is adopted when it
hashes to the expected digest and otherwise replaced by a fresh download. A URL
without any digest is downloaded once and then served from the cache; the record
keeps the digest computed during that download. ``fetch(..., force_download=True)``
(``clipkit fetch --force``) or ``forget(path)`` refreshes it.

A cache directory clipkit cannot write to (a shared, pre-filled cluster cache;
a read-only mount) still serves the files present in it, without a lock and
without writing a record: each is hashed against its expected digest on every
load (a file of a URL without a digest is served as it is). Only a download
needs a writable cache; every failure to write there (permissions, read-only
file system, disk full) is a ``ConfigurationError`` or ``FetchError`` naming
the directory, and leaves no partial file behind.

Environment: ``CLIPKIT_OFFLINE=1`` never touches the network;
``CLIPKIT_MAX_RETRIES`` (5), ``CLIPKIT_RETRY_BASE_DELAY`` (1 s, doubled each
retry), ``CLIPKIT_RETRY_MAX_DELAY`` (60 s, also the cap on ``Retry-After``),
``CLIPKIT_READ_TIMEOUT`` (60 s without a byte counts as a stall);
``CLIPKIT_PROGRESS=0/1`` forces the progress bar off or on.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import json
import os
import posixpath
import random
import re
import secrets
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path
from typing import Any, Protocol

import attrs
import filelock

from clipkit.errors import (
    AccessDeniedError,
    CheckpointNotFoundError,
    ClipkitError,
    ChecksumError,
    ConfigurationError,
    FetchError,
    OfflineError,
    SourceNotFoundError,
)
from clipkit.spec import check_sha256

HTTP_SCHEMES = frozenset({"http", "https"})
S3_SCHEMES = frozenset({"s3", "s3a"})
META_DIR = ".clipkit"
PART_SUFFIX = ".part"

HTTP_CHUNK = 1 << 20  # at most this many bytes per read; a read returns what has arrived
FSSPEC_CHUNK = 8 << 20  # bytes per fsspec read: one ranged GET each on object stores
HASH_CHUNK = 1 << 20

_FALSY = frozenset({"", "0", "false", "no", "off"})
_DIGEST_DIR = re.compile(r"^[0-9a-fA-F]{64}$")
_FRAGMENT = re.compile(r"^(?P<location>.*)#sha256=(?P<digest>[^#&]*)$", re.DOTALL)
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_RETRY_STATUSES = frozenset({408, 425, 429})

# Indirection so tests can record the backoff delays instead of sleeping through them.
_sleep: Callable[[float], None] = time.sleep


# -- settings -------------------------------------------------------------------------


def _env_number(name: str, default: float, *, minimum: float, integer: bool = False) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"${name} must be {kind} >= {minimum}, got {raw!r}; fix or unset it")
    return value


@attrs.frozen(kw_only=True)
class FetchSettings:
    """Retry, backoff and timeout knobs for one fetch; ``FetchSettings.from_env()`` reads them from the environment.

    ``max_retries`` bounds consecutive failed attempts that made no progress;
    the n-th retry waits ``retry_base_delay * 2**(n-1)`` seconds (with jitter),
    or what the server's ``Retry-After`` asks, never more than
    ``retry_max_delay``; ``read_timeout`` is how long a connection may go without
    a byte before it counts as stalled.
    """

    max_retries: int = 5
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    read_timeout: float = 60.0

    @classmethod
    def from_env(cls) -> FetchSettings:
        """Settings from the environment; each variable that is unset keeps its default."""
        default = attrs.fields(cls)
        return cls(
            max_retries=_env_number("CLIPKIT_MAX_RETRIES", default.max_retries.default, minimum=0, integer=True),
            retry_base_delay=_env_number("CLIPKIT_RETRY_BASE_DELAY", default.retry_base_delay.default, minimum=0),
            retry_max_delay=_env_number("CLIPKIT_RETRY_MAX_DELAY", default.retry_max_delay.default, minimum=0),
            read_timeout=_env_number("CLIPKIT_READ_TIMEOUT", default.read_timeout.default, minimum=0.001),
        )

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt after ``failures`` consecutive failures."""
        if retry_after is not None:
            return min(self.retry_max_delay, max(0.0, retry_after))
        exponential = self.retry_base_delay * 2 ** max(0, failures - 1)
        return min(self.retry_max_delay, exponential) * random.uniform(0.5, 1.0)


def is_offline() -> bool:
    """Whether ``CLIPKIT_OFFLINE`` is set (to anything but ``0``, ``false``, ``no``, ``off``): nothing is downloaded.

    Every ``fetch_checkpoint`` implementation must honour it, third-party
    plugins included: before touching the network, call ``is_offline()`` and,
    when it is true and the checkpoint is not already on disk, raise
    ``clipkit.errors.OfflineError`` (naming the source and saying it is not
    cached) instead of downloading. ``clipkit.fetching.fetch`` does this itself,
    so a plugin that delegates to it needs no check of its own.
    """
    return os.environ.get("CLIPKIT_OFFLINE", "").strip().lower() not in _FALSY


# -- sources and digests --------------------------------------------------------------


def url_scheme(source: str) -> str | None:
    """The lower-case protocol of a URL (``"https"``; a chained fsspec URL's first link), ``None`` for a plain path."""
    match = _SCHEME.match(source)
    if match:
        return match["scheme"].lower()
    if "::" in source:
        head = source.split("::", 1)[0]
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", head):
            return head.lower()
    return None


def is_fsspec_url(source: str) -> bool:
    """Whether ``source`` is a URL whose protocol fsspec knows (installed or not), chained URLs included."""
    scheme = url_scheme(source)
    if scheme is None:
        return False
    import fsspec

    return scheme in fsspec.available_protocols()


def _file_segment(location: str) -> str:
    """The part of a (possibly chained) URL that names the file: the first link with ``://``."""
    if "::" in location:
        for segment in location.split("::"):
            if "://" in segment:
                return segment
    return location


def _url_path(location: str) -> str:
    segment = _file_segment(location)
    scheme = url_scheme(segment)
    if scheme in HTTP_SCHEMES:
        return urllib.parse.urlsplit(segment).path
    return segment.split("://", 1)[1] if "://" in segment else segment


def digest_in_path(location: str) -> str | None:
    """The digest a URL carries as its last directory (``.../<64 hex>/<file>``), lower-cased, or ``None``."""
    parts = _url_path(location).split("/")
    if len(parts) >= 2 and _DIGEST_DIR.match(parts[-2]):
        return parts[-2].lower()
    return None


def _split_fragment(source: str) -> tuple[str, str | None]:
    """Split ``source`` into the location to fetch and the raw ``#sha256=`` value (``None`` if absent)."""
    if url_scheme(source) in HTTP_SCHEMES:
        parts = urllib.parse.urlsplit(source)
        if not parts.fragment:
            return parts._replace(fragment="").geturl(), None
        fields = urllib.parse.parse_qs(parts.fragment, keep_blank_values=True)
        location = parts._replace(fragment="").geturl()
        if "sha256" not in fields:
            return location, None  # a page anchor means nothing to a download
        return location, fields["sha256"][-1]
    # Elsewhere '#' may be part of an object key: only a trailing '#sha256=...' is ours.
    match = _FRAGMENT.match(source)
    if match:
        return match["location"], match["digest"]
    return source, None


@attrs.frozen
class ResolvedSource:
    """A source split into what to fetch (``location``, digest fragment removed) and the digest it must have."""

    location: str
    sha256: str | None
    digest_origin: str | None  # "argument", "fragment", "path" or None


def resolve_digest(source: str, sha256: str | None = None) -> ResolvedSource:
    """Find the digest ``source`` must have: ``sha256``, else a ``#sha256=`` fragment, else a 64-hex last directory.

    Raises ``ConfigurationError`` (before any network access) for a malformed
    digest from the argument or the fragment, and when the argument and the
    fragment disagree. A digest inferred from the URL path is overridden by an
    explicit one without complaint: the directory name may mean something else.
    """
    explicit = check_sha256(sha256, what="sha256")
    location, raw_fragment = _split_fragment(source)
    fragment = None
    if raw_fragment is not None:
        fragment = check_sha256(raw_fragment, what=f"the #sha256= fragment of {source!r}")
    if explicit and fragment and explicit != fragment:
        raise ConfigurationError(
            f"two different digests were given for {location!r}: sha256={explicit} and #sha256={fragment} "
            f"in the URL; drop one of them or make them agree"
        )
    if explicit:
        return ResolvedSource(location, explicit, "argument")
    if fragment:
        return ResolvedSource(location, fragment, "fragment")
    in_path = digest_in_path(location)
    return ResolvedSource(location, in_path, "path" if in_path else None)


def local_path_of(location: str) -> Path | None:
    """The local path a ``file://`` URL or a plain path names, or ``None`` for any other URL."""
    scheme = url_scheme(location)
    if scheme is None:
        return Path(location).expanduser()
    if scheme == "file" and "::" not in location:
        parts = urllib.parse.urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(
                f"{location!r} names a file on host {parts.netloc!r}; file:// URLs must be local "
                f"(file:///absolute/path)"
            )
        return Path(urllib.request.url2pathname(parts.path))
    return None


# -- cache layout and the verified record ---------------------------------------------------


def _endpoint_of(scheme: str | None, storage_options: Mapping[str, Any]) -> str | None:
    endpoint = storage_options.get("endpoint_url") or (storage_options.get("client_kwargs") or {}).get("endpoint_url")
    if endpoint is None and scheme in S3_SCHEMES:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return str(endpoint) if endpoint else None


def _official_files() -> frozenset[tuple[str, str]]:
    from clipkit.builtin.models import OFFICIAL_FILES  # imported late: the registry module imports plugin machinery

    return OFFICIAL_FILES


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
    neither two contents nor two URLs ever share a cache entry. Raises
    ``ConfigurationError`` for a malformed digest or a URL without a file name.
    """
    resolved = resolve_digest(os.fspath(location), sha256)
    return _slot(resolved.location, Path(cache_dir).expanduser(), storage_options or {}, resolved.sha256)


def _slot(location: str, cache_dir: Path, storage_options: Mapping[str, Any], digest: str | None) -> Path:
    raw = posixpath.basename(_url_path(location))
    name = urllib.parse.unquote(raw).replace("/", "_").replace("\\", "_").replace("\x00", "_")
    if name in ("", ".", "..") or name.startswith("."):
        raise ConfigurationError(
            f"{location!r} does not end in a file name clipkit can cache; give the URL of the checkpoint file itself"
        )
    if digest is not None and (digest, name) in _official_files():
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


def _meta_dir(target: Path) -> Path:
    return target.parent / META_DIR


def record_path(target: Path) -> Path:
    """The verified-record file kept for the cached file ``target``."""
    return _meta_dir(target) / f"{target.name}.json"


def lock_path(target: Path) -> Path:
    """The lock file that serialises downloads of ``target`` across processes."""
    return _meta_dir(target) / f"{target.name}.lock"


@attrs.frozen(kw_only=True)
class VerifiedRecord:
    """What clipkit verified about a cached file: its digest and the file's identity at that moment.

    The file is trusted without hashing while its size, mtime, ctime and inode
    are still the recorded ones; ``ctime`` cannot be set back by a program, so an
    edit that restores the mtime is still noticed.
    """

    sha256: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    source: str = ""

    @classmethod
    def of(cls, path: Path, sha256: str, source: str) -> VerifiedRecord:
        """The record for ``path`` as it is on disk now, whose content hashes to ``sha256``."""
        st = path.stat()
        return cls(sha256=sha256, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
                   inode=st.st_ino, source=source)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` is still the very file this record describes (no hashing)."""
        try:
            st = path.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (
            self.size, self.mtime_ns, self.ctime_ns, self.inode
        )


def read_record(target: Path) -> VerifiedRecord | None:
    """The verified record of cached file ``target``, or ``None`` when there is none or it is unreadable."""
    try:
        data = json.loads(record_path(target).read_text(encoding="utf-8"))
        return VerifiedRecord(
            sha256=check_sha256(data["sha256"]) or "",
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            ctime_ns=int(data["ctime_ns"]),
            inode=int(data["inode"]),
            source=str(data.get("source", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(target: Path, record: VerifiedRecord) -> None:
    """Write the record atomically; best effort: without one, the file is only hashed again next time."""
    path = record_path(target)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    payload = attrs.asdict(record)
    payload["verified_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _forget(target: Path) -> None:
    """Remove ``target`` and its record (call while holding its lock, or where no lock can be had)."""
    for path in (target, record_path(target)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _cache_error(exc, target.parent, action=f"remove {path}") from None


def forget(target: str | os.PathLike[str]) -> None:
    """Remove the cached file ``target`` (a path ``fetch`` returned), its verified record and its leftover part files.

    For a download that turned out to be unusable (e.g. a URL without a digest
    that answered an HTML error page with status 200): the next ``fetch`` of
    that source downloads it again. It waits for the target's lock, so a
    download of the same target in another process finishes first. A file
    clipkit has no record of (a user's own file served in place, a file adopted
    from a read-only cache) is left alone; a missing file is not an error. Raises
    ``ConfigurationError`` when the cache directory does not let the file be removed.
    """
    target = Path(target)
    if not _meta_dir(target).is_dir():
        return  # nothing clipkit ever wrote is there
    try:
        lock = filelock.FileLock(lock_path(target))
        lock.acquire()
    except OSError as exc:
        raise _cache_error(exc, target.parent, action=f"lock {lock_path(target)}") from None
    try:
        if record_path(target).exists():  # another process may have forgotten it while we waited
            _forget(target)
        _remove_stale_parts(target)
    finally:
        lock.release()


_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _cache_error(exc: OSError, cache_dir: Path, *, action: str, source: str | None = None,
                 needed: int | None = None) -> ConfigurationError | FetchError:
    """The typed error for an ``OSError`` met while writing in the cache directory ``cache_dir``."""
    what = f" while fetching {source}" if source else ""
    if exc.errno in _NOT_WRITABLE:
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


# -- hashing and verifying local files ----------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The lower-case hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])
    return hasher.hexdigest()


def _checksum_error(source: str, expected: str, actual: str, what: str) -> ChecksumError:
    return ChecksumError(
        f"SHA-256 mismatch for {source}: expected {expected}, got {actual}. {what}",
        source=source, expected=expected, actual=actual,
    )


def verify_file(path: str | os.PathLike[str], sha256: str, source: str | None = None) -> Path:
    """Check that the local file ``path`` hashes to ``sha256`` and return it as a ``Path``.

    For the user's own files (plain paths, ``file://``): the whole file is
    hashed every time and, on a mismatch, ``ChecksumError`` is raised naming
    ``source`` (default: the path) and both digests; the file is never touched.
    Raises ``ConfigurationError`` for a malformed digest and
    ``CheckpointNotFoundError`` when the file does not exist.
    """
    expected = check_sha256(sha256, what="sha256")
    path = Path(path)
    label = source or str(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    assert expected is not None
    actual = sha256_file(path)
    if actual != expected:
        raise _checksum_error(label, expected, actual,
                              f"The file {path} is left as it is; check the digest you gave, or the file.")
    return path


# -- transports ---------------------------------------------------------------------------


class _Transient(Exception):
    """An attempt failed in a way worth retrying (connection, timeout, 408/429/5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@attrs.define
class _Body:
    """One response: where its bytes start in the object, the object's size if known, and the bytes."""

    start: int
    total: int | None
    chunks: Iterator[bytes]
    close: Callable[[], None]


class _Transport(Protocol):
    def open(self, offset: int) -> _Body: ...


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class _HTTPTransport:
    """GETs with ``Range`` for resumption, over urllib (redirects and ``*_proxy`` variables honoured)."""

    OPTIONS = frozenset({"headers"})

    def __init__(self, url: str, source: str, storage_options: Mapping[str, Any], settings: FetchSettings) -> None:
        unknown = set(storage_options) - self.OPTIONS
        if unknown:
            raise ConfigurationError(
                f"storage_options {sorted(unknown)} are not understood for {url_scheme(url)}:// sources; "
                f"only {sorted(self.OPTIONS)} (extra request headers, e.g. Authorization) is"
            )
        self.url = url
        self.source = source
        self.headers = dict(storage_options.get("headers") or {})
        self.settings = settings
        self.validator: str | None = None  # ETag / Last-Modified of the first response, for If-Range
        self.ranges_usable = True
        self._opener = urllib.request.build_opener()

    def _request(self, offset: int) -> urllib.request.Request:
        from clipkit import __version__

        request = urllib.request.Request(self.url, headers={
            "User-Agent": f"clipkit/{__version__}",
            "Accept-Encoding": "identity",
        })
        for key, value in self.headers.items():
            request.add_unredirected_header(key, value)  # credentials do not follow a redirect to another host
        if offset and self.ranges_usable:
            request.add_header("Range", f"bytes={offset}-")
            if self.validator:
                request.add_header("If-Range", self.validator)
        return request

    def _fail(self, code: int, reason: str, headers: Any) -> Exception:
        label = f"HTTP {code} {reason}".strip()
        if code in (401, 403):
            return AccessDeniedError(
                f"access to {self.source} was refused ({label}); check the URL, or pass credentials with "
                f"storage_options={{'headers': {{'Authorization': ...}}}}",
                source=self.source,
            )
        if code in (404, 410):
            return SourceNotFoundError(f"{self.source} does not exist ({label}); check the URL", source=self.source)
        if code in _RETRY_STATUSES or code >= 500:
            return _Transient(label, retry_after=_parse_retry_after(headers.get("Retry-After") if headers else None))
        return FetchError(f"could not fetch {self.source}: the server answered {label}", source=self.source)

    def open(self, offset: int) -> _Body:
        request = self._request(offset)
        try:
            response = self._opener.open(request, timeout=self.settings.read_timeout)
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                if exc.code == 416 and offset:
                    self.ranges_usable = False  # the object changed under us; start over
                    raise _Transient("HTTP 416 Range Not Satisfiable; restarting from the first byte") from None
                raise self._fail(exc.code, str(exc.reason or ""), exc.headers) from None
        except urllib.error.URLError as exc:
            import ssl

            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise FetchError(f"could not fetch {self.source}: TLS certificate check failed: {exc.reason}",
                                 source=self.source) from None
            raise _Transient(f"connection failed: {exc.reason}") from None
        except (OSError, HTTPException) as exc:
            raise _Transient(f"connection failed: {type(exc).__name__}: {exc}") from None

        status = response.status
        headers = response.headers
        length = headers.get("Content-Length")
        if status == 206 and "Range" in request.headers:
            match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if not match or int(match[1]) != offset:
                response.close()
                self.ranges_usable = False
                raise _Transient(f"the server answered a Range request with Content-Range "
                                 f"{headers.get('Content-Range')!r}; restarting from the first byte")
            start, total = offset, (int(match[3]) if match[3] != "*" else None)
        else:
            start = 0
            total = int(length) if length and length.isdigit() else None
            etag = headers.get("ETag")
            if etag and not etag.startswith("W/"):
                self.validator = etag
            elif headers.get("Last-Modified"):
                self.validator = headers.get("Last-Modified")
        timeout = self.settings.read_timeout

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    data = response.read1(HTTP_CHUNK)  # what has arrived: a stall loses nothing received
                except (TimeoutError, socket.timeout):
                    raise _Transient(f"no data for {timeout:g} s (stalled transfer)") from None
                except (OSError, HTTPException) as exc:
                    raise _Transient(f"connection broken: {type(exc).__name__}: {exc}") from None
                if not data:
                    return
                yield data

        return _Body(start=start, total=total, chunks=chunks(), close=response.close)


def _transient_fsspec_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import aiohttp

        types.append(aiohttp.ClientError)
    with contextlib.suppress(ImportError):
        from botocore import exceptions as boto

        types += [boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError,
                  boto.ConnectionClosedError]
    return tuple(types)


class _FsspecTransport:
    """Reads through any fsspec filesystem; a resumed attempt seeks to where the last one broke off."""

    def __init__(self, location: str, source: str, storage_options: Mapping[str, Any], settings: FetchSettings) -> None:
        self.location = location
        self.source = source
        self.storage_options = dict(storage_options)
        if url_scheme(_file_segment(location)) in S3_SCHEMES:
            # the same stall timeout as over HTTP, unless the caller configured botocore themselves
            timeouts = {"read_timeout": settings.read_timeout, "connect_timeout": settings.read_timeout}
            self.storage_options["config_kwargs"] = {**timeouts, **(self.storage_options.get("config_kwargs") or {})}
        self.settings = settings
        self._fs: Any = None
        self._path = ""

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            import fsspec

            try:
                # A fresh instance: fsspec's instance cache would keep a client made under older
                # credentials or endpoint variables.
                self._fs, self._path = fsspec.core.url_to_fs(
                    self.location, skip_instance_cache=True, **self.storage_options
                )
            except ImportError as exc:
                scheme = url_scheme(self.location)
                hint = "pip install 'clipkit[s3]'" if scheme in S3_SCHEMES else "install the fsspec implementation"
                raise ConfigurationError(
                    f"cannot fetch {self.source}: the filesystem for {scheme}:// is not installed ({exc}); {hint}"
                ) from None
            except TypeError as exc:
                raise ConfigurationError(
                    f"storage_options {sorted(self.storage_options)} were refused by the "
                    f"{url_scheme(self.location)}:// filesystem: {exc}"
                ) from None
        return self._fs, self._path

    def _raise(self, exc: BaseException) -> None:
        mapped = self._map(exc)
        if mapped is exc:
            raise exc
        raise mapped from exc

    def _map(self, exc: BaseException) -> BaseException:
        name = type(exc).__name__
        if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
            return SourceNotFoundError(f"{self.source} does not exist ({exc}); check the bucket and key",
                                       source=self.source)
        if isinstance(exc, PermissionError):
            if self.storage_options.get("anon"):
                advice = "anonymous access is not allowed there; drop anon=True and provide credentials"
            else:
                advice = ("check the credentials (AWS_* variables, ~/.aws files, or storage_options key/secret), "
                          "or use storage_options={'anon': True} for a public bucket")
            return AccessDeniedError(f"access to {self.source} was refused ({exc}); {advice}", source=self.source)
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return AccessDeniedError(
                f"no usable credentials to read {self.source} ({exc}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                f"or a profile, or pass storage_options={{'anon': True}} for a public bucket",
                source=self.source,
            )
        if isinstance(exc, _transient_fsspec_types()) or (type(exc) is OSError):
            return _Transient(f"{name}: {exc}")
        if isinstance(exc, OSError) and not isinstance(exc, ClipkitError):
            return FetchError(f"could not fetch {self.source}: {name}: {exc}", source=self.source)
        return exc

    def open(self, offset: int) -> _Body:
        fs, path = self._filesystem()
        scheme = url_scheme(_file_segment(self.location))
        kwargs = {"block_size": FSSPEC_CHUNK, "cache_type": "none"} if scheme in S3_SCHEMES else {}
        try:
            handle = fs.open(path, "rb", **kwargs)
        except Exception as exc:
            self._raise(exc)
        start = 0
        try:
            total = getattr(handle, "size", None)
            if total is None:
                total = fs.size(path)
            if offset:
                with contextlib.suppress(OSError, ValueError):
                    handle.seek(offset)
                    start = handle.tell()
        except Exception as exc:
            handle.close()
            self._raise(exc)

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    data = handle.read(FSSPEC_CHUNK)
                except Exception as exc:
                    self._raise(exc)
                if not data:
                    return
                yield data

        return _Body(start=start, total=int(total) if total is not None else None, chunks=chunks(), close=handle.close)


def _transport_for(location: str, source: str, storage_options: Mapping[str, Any],
                   settings: FetchSettings) -> _Transport:
    scheme = url_scheme(location)
    if scheme in HTTP_SCHEMES:
        return _HTTPTransport(location, source, storage_options, settings)
    if is_fsspec_url(location):
        return _FsspecTransport(location, source, storage_options, settings)
    raise ConfigurationError(
        f"clipkit cannot fetch {source!r}: no fetcher knows the {scheme}:// protocol; use http(s)://, s3://, "
        f"file://, a local path, or a protocol fsspec knows (or a plugin implementing fetch_checkpoint)"
    )


# -- the download itself ------------------------------------------------------------------


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    forced = os.environ.get("CLIPKIT_PROGRESS", "").strip().lower()
    if forced:
        return forced not in _FALSY
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def _new_part(target: Path) -> tuple[Path, int]:
    """Create ``.clipkit/<name>.<random>.part`` exclusively (mode 0666 less the umask); return it and its fd."""
    while True:
        part = _meta_dir(target) / f"{target.name}.{secrets.token_hex(6)}{PART_SUFFIX}"
        try:
            return part, os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


def _remove_stale_parts(target: Path) -> None:
    """Delete partial downloads of ``target`` left by killed processes (call only while holding its lock)."""
    import glob

    meta, name = glob.escape(str(_meta_dir(target))), glob.escape(target.name)
    # exactly the random tags _new_part and _write_record use, so another target's files never match
    for pattern in (f"{name}.{'?' * 12}{PART_SUFFIX}", f"{name}.json.{'?' * 8}.tmp"):
        for leftover in glob.glob(os.path.join(meta, pattern)):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _PartFile:
    """The temp file a download streams into; ``write`` is the one place bytes reach the disk."""

    def __init__(self, fd: int) -> None:
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate()

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def close(self) -> None:
        self.file.close()


def _stream(transport: _Transport, part: _PartFile, *, source: str, settings: FetchSettings,
            bar: Any) -> tuple[str, int]:
    """Copy the source into ``part`` while hashing; resume or restart after transient faults; return (digest, size)."""
    hasher = hashlib.sha256()
    written = 0
    furthest = 0  # most bytes ever held: a failure that got past it made progress
    failures = 0
    while True:
        body: _Body | None = None
        try:
            body = transport.open(written)
            if body.start != written:  # the server ignored Range (or we asked for none): start over
                part.restart()
                hasher = hashlib.sha256()
                written = 0
                bar.reset(total=body.total)
            elif bar.total is None and body.total is not None:
                bar.total = body.total
                bar.refresh()
            for chunk in body.chunks:
                part.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
            if body.total is not None and written < body.total:
                raise _Transient(f"the connection closed after {written} of {body.total} bytes")
            return hasher.hexdigest(), written
        except _Transient as exc:
            if written > furthest:
                furthest = written
                failures = 0
            failures += 1
            if failures > settings.max_retries:
                raise FetchError(
                    f"could not fetch {source}: {exc} (gave up after {failures} failed attempts in a row); "
                    f"check the network or try again later",
                    source=source,
                ) from None
            _sleep(settings.backoff(failures, exc.retry_after))
        finally:
            if body is not None:
                with contextlib.suppress(Exception):
                    body.close()


def _download(transport: _Transport, target: Path, *, source: str, expected: str | None,
              settings: FetchSettings, progress: bool) -> str:
    """Download into a part file next to ``target``, verify, fsync, rename into place, record; return the digest.

    An ``OSError`` from the cache side (creating, writing, syncing or renaming
    the part file) becomes ``ConfigurationError`` or ``FetchError`` naming the
    cache directory; in every failure the part file is removed.
    """
    from tqdm.auto import tqdm

    step = "create a temporary file in " + str(_meta_dir(target))
    try:
        part, fd = _new_part(target)
    except OSError as exc:
        raise _cache_error(exc, target.parent, action=step, source=source) from None
    bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
               disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=True)
    try:
        sink = _PartFile(fd)
        try:
            step = f"write {part.name}"
            actual, _ = _stream(transport, sink, source=source, settings=settings, bar=bar)
            step = f"flush {part.name} to disk"
            sink.finish()
        finally:
            with contextlib.suppress(OSError):  # a failed flush was reported by finish() already
                sink.close()
            bar.close()
        if expected is not None and actual != expected:
            raise _checksum_error(source, expected, actual,
                                  "The download was discarded and nothing was cached; check the digest you "
                                  "gave (argument, #sha256= or the URL), or whether the source changed.")
        step = f"move the download into place as {target}"
        os.replace(part, target)
    except BaseException as exc:  # Ctrl-C and a full disk too: nothing half-written may stay behind
        with contextlib.suppress(OSError):
            os.unlink(part)
        if isinstance(exc, OSError) and not isinstance(exc, ClipkitError):
            # transports turn their own OSErrors into _Transient or FetchError: this one is the cache's
            needed = bar.total if isinstance(bar.total, (int, float)) and bar.total > 0 else None
            raise _cache_error(exc, target.parent, action=step, source=source,
                               needed=int(needed) if needed else None) from None
        raise
    _fsync_dir(target.parent)
    _write_record(target, VerifiedRecord.of(target, actual, source))
    return actual


# -- the cache ------------------------------------------------------------------------------


@attrs.frozen
class _Lookup:
    hit: bool
    why: str = ""  # for a miss: why the cached file (if any) cannot be used


def _lookup(target: Path, expected: str | None, *, source: str, force_verify: bool) -> _Lookup:
    """Decide whether the cached ``target`` can be served (call while holding its lock).

    A file modified after clipkit verified it is removed and refused with
    ``ChecksumError``; a file clipkit has no record of is adopted when it hashes
    to the expected digest and otherwise replaced by a download.
    """
    if not target.is_file():
        return _Lookup(False, f"there is no {target}")
    record = read_record(target)
    if record is not None and record.matches(target) and not force_verify:
        recorded = record.sha256
    elif record is not None:
        actual = sha256_file(target)
        if actual != record.sha256 and actual != expected:
            _forget(target)
            raise _checksum_error(
                source, expected or record.sha256, actual,
                f"The cached file {target} was changed after clipkit verified it; it has been removed. "
                f"Fetch again to download a fresh copy.",
            )
        _write_record(target, VerifiedRecord.of(target, actual, source))
        recorded = actual
    elif expected is not None:
        actual = sha256_file(target)
        if actual != expected:
            return _Lookup(False, f"{target} exists but has SHA-256 {actual} (an incomplete or other file)")
        _write_record(target, VerifiedRecord.of(target, actual, source))
        recorded = actual
    else:
        return _Lookup(False, f"{target} exists but clipkit has no record of it and no digest to check it against")
    if expected is not None and recorded != expected:
        return _Lookup(False, f"the cached {target.name} has SHA-256 {recorded}, not {expected}")
    return _Lookup(True)


def _quick_hit(target: Path, expected: str | None) -> bool:
    """A lock-free cache hit: the record still matches the file and the digest is the one wanted."""
    record = read_record(target)
    return record is not None and record.matches(target) and expected in (None, record.sha256)


class _NotWritable(Exception):
    """The cache directory (or its ``.clipkit``) cannot be written: only files already there can be served."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _prepare_cache_dir(cache_dir: Path) -> None:
    """Create ``cache_dir/.clipkit``; raise ``_NotWritable`` when permissions or a read-only mount forbid it."""
    try:
        (cache_dir / META_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise _NotWritable(exc) from None
        raise ConfigurationError(
            f"cannot create the cache directory {cache_dir / META_DIR} ({exc.strerror or exc}); pass a writable "
            f"download_root= or set $CLIPKIT_CACHE"
        ) from None


@contextlib.contextmanager
def _target_lock(target: Path, *, source: str, progress: bool) -> Iterator[None]:
    """Hold ``target``'s lock; ``_NotWritable`` when the lock file cannot be created there."""
    lock = filelock.FileLock(lock_path(target))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if progress:
                print(f"clipkit: waiting for another process fetching {source} ...", file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise _NotWritable(exc) from None
        raise _cache_error(exc, target.parent, action=f"create the lock file {lock_path(target)}",
                           source=source) from None
    try:
        yield
    finally:
        lock.release()


def _serve_read_only(targets: list[Path], expected: str | None, *, source: str, why: _NotWritable,
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
        actual = sha256_file(path)
        if actual == expected:
            return path
        mismatch = mismatch or (path, actual)
    path, actual = mismatch
    raise _checksum_error(source, expected, actual,
                          f"The cached file {path} is another file, and it cannot be replaced because "
                          f"{reason}; pass a writable download_root= or set $CLIPKIT_CACHE.")


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
    cache that cannot be written when a download is needed).
    """
    resolved = resolve_digest(os.fspath(source), sha256)
    location, expected = resolved.location, resolved.sha256
    local = local_path_of(location)
    if local is not None:
        if not local.exists():
            raise CheckpointNotFoundError(f"checkpoint not found: {local} (from {source})")
        return verify_file(local, expected, source=str(source)) if expected else local

    storage_options = dict(storage_options or {})
    settings = FetchSettings.from_env()
    transport = _transport_for(location, str(source), storage_options, settings)  # checks options; no I/O yet
    cache_dir = Path(cache_dir).expanduser()
    target = _slot(location, cache_dir, storage_options, expected)
    # the same URL fetched earlier without a digest: served when its record holds this very digest
    plain = _slot(location, cache_dir, storage_options, None) if expected and not digest_in_path(location) else None
    if not (force_verify or force_download):
        if _quick_hit(target, expected):
            return target
        if plain is not None and _quick_hit(plain, expected):
            return plain

    show = _progress_enabled(progress)
    try:
        _prepare_cache_dir(cache_dir)
        with _target_lock(target, source=str(source), progress=show):
            if not force_download:
                found = _lookup(target, expected, source=str(source), force_verify=force_verify)
                if found.hit:
                    return target
                if is_offline():
                    raise OfflineError(
                        f"{source} is not in the cache ({found.why}), and CLIPKIT_OFFLINE is set, so it was not "
                        f"downloaded; fetch it once while online (clipkit fetch SOURCE) or unset CLIPKIT_OFFLINE",
                        source=str(source),
                    )
            elif is_offline():
                raise OfflineError(
                    f"{source} cannot be downloaded again: CLIPKIT_OFFLINE is set; unset it to refresh the cache",
                    source=str(source),
                )
            _remove_stale_parts(target)
            _download(transport, target, source=str(source), expected=expected, settings=settings, progress=show)
    except _NotWritable as why:
        candidates = [target] if plain is None else [target, plain]
        return _serve_read_only(candidates, expected, source=str(source), why=why, force_download=force_download)
    return target


__all__ = [
    "FetchSettings",
    "ResolvedSource",
    "VerifiedRecord",
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
