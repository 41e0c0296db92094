"""A named model's sources, tried in order: your mirror, the original URL, then the copies on the Hub.

``clipkit.load("ViT-B/32")`` does not depend on one CDN. Each name in the
release table carries an ordered list of sources (``ModelSource.url`` then
``ModelSource.alternates``), and ``fetch_named`` resolves it in two passes:

1. **Any cached copy first, no network.** Every source is asked for a copy
   already in a cache — clipkit's (``download_root`` / ``$CLIPKIT_CACHE``), the
   reference's ``~/.cache/clip``, or the Hugging Face cache — with
   ``clipkit.fetching.cache_only()``, so each fetcher serves only what it has
   verified (the original by its SHA-256, a Hub file by the digest the Hub
   advertised). The first one found serves. Offline (``CLIPKIT_OFFLINE``,
   ``HF_HUB_OFFLINE`` for Hub sources) this is the only pass.
2. **Then each source in order over the network.** A failure that will not heal
   (404/410, a host name that does not resolve, a refused TLS handshake, access
   denied, a checksum mismatch, ``clipkit[hub]`` not installed) moves on to the
   next source at once; a transient one (connection reset, 5xx, 429) has first
   been retried by the fetcher (``CLIPKIT_MAX_RETRIES``). When every source
   fails, one error lists each source and why.

The mirror (``mirror=`` or ``$CLIPKIT_MIRROR``: a base URL, any fsspec prefix
or a directory, e.g. ``https://artifacts.example/clip``, ``s3://bucket/clip``
or ``/mnt/models/clip``) is
tried first and serves ``<base>/<sha256>/<file>``, verified by the same SHA-256
as the original; ``storage_options`` go to it (or, without a mirror, to the
original URL). A ``sha256=`` the caller gives pins those bytes: the Hub copies
(other files holding the same weights) are then skipped.

Which source served is logged (logger ``clipkit``: info, or a warning when an
earlier source failed) and kept for ``clipkit inspect`` / ``clipkit fetch``
(``last_served(name)``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from clipkit import fetching
from clipkit.errors import ChecksumError, ConfigurationError, FetchError, OfflineError, SourcesExhaustedError
from clipkit.fetching.hub import is_hub_source
from clipkit.fetching.redact import redact_url
from clipkit.plugins import PluginRegistry
from clipkit.spec import ModelSource

MIRROR_ENV = "CLIPKIT_MIRROR"
REFERENCE_CACHE = Path("~/.cache/clip")

_log = logging.getLogger("clipkit")
_served: dict[str, Served] = {}
_served_lock = threading.Lock()


@attrs.frozen
class Candidate:
    """One place to fetch a name from: ``kind`` is ``"mirror"``, ``"original"`` or ``"alternate"``."""

    source: str
    kind: str
    sha256: str | None = None
    note: str = ""  # why it is skipped, when it is ("" = usable)


@attrs.frozen
class Attempt:
    """What happened when one source was tried: ``outcome`` is ``"served"`` or the reason it did not serve."""

    source: str
    outcome: str


@attrs.frozen
class Served:
    """Which source served a name's weights (``cached``: from a cache, nothing downloaded) and what was tried."""

    name: str
    path: Path
    source: str
    cached: bool
    attempts: tuple[Attempt, ...] = ()

    def describe(self) -> str:
        """One line: the source, cached or downloaded, and the sources that failed before it."""
        how = "cached copy" if self.cached else "downloaded"
        failed = [a for a in self.attempts if a.outcome != "served" and not a.outcome.startswith("not cached")]
        before = "".join(f"; {a.source} failed first ({a.outcome})" for a in failed)
        return f"{self.name}: weights from {self.source} ({how}){before}"


def mirror_base(mirror: str | os.PathLike[str] | None = None) -> str | None:
    """The mirror to try first: ``mirror`` if given, else ``$CLIPKIT_MIRROR``; ``None`` when neither is set.

    A plain directory (a shared file system) is taken as its ``file://`` URL:
    its files are used in place, checked against the digest.
    """
    base = os.fspath(mirror) if mirror is not None else os.environ.get(MIRROR_ENV, "")
    base = base.strip().rstrip("/")
    if base and fetching.url_scheme(base) is None:
        base = Path(base).expanduser().absolute().as_uri()
    return base or None


def mirror_url(base: str, entry: ModelSource) -> str | None:
    """``<base>/<sha256>/<file>`` for ``entry``, or ``None`` when it has no digest (a mirror could not be verified)."""
    if entry.sha256 is None:
        return None
    filename = posixpath.basename(urllib.parse.urlsplit(entry.url).path)
    return f"{base}/{entry.sha256}/{filename}" if filename else None


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def candidates(entry: ModelSource, *, mirror: str | None = None, sha256: str | None = None,
               archive_only: bool = False) -> list[Candidate]:
    """The sources of ``entry`` in the order they are tried, each with the digest it is checked against.

    Unusable ones (a plugin not installed, a Hub copy when ``sha256`` pins the
    original bytes or ``archive_only`` asks for the original file, as
    ``jit=True`` does) are kept with ``note`` saying why, so errors and
    ``clipkit models`` can show them.
    """
    pinned = sha256 or entry.sha256
    found: list[Candidate] = []
    base = mirror_base(mirror)
    if base is not None:
        url = mirror_url(base, entry)
        found.append(Candidate(url or base, "mirror", pinned,
                               "" if url else "no SHA-256 is known for this name, so a mirror cannot be verified"))
    found.append(Candidate(entry.url, "original", pinned))
    for alternate in entry.alternates:
        note = ""
        if alternate.requires and not _installed(alternate.requires):
            note = f"needs the {alternate.requires} plugin (pip install {alternate.requires})"
        elif archive_only:
            note = "jit=True runs the original TorchScript archive; this copy holds the weights in another file"
        elif sha256 is not None and sha256 != entry.sha256:
            note = f"sha256={sha256} pins other bytes"
        elif sha256 is not None and alternate.sha256 is None:
            note = "the sha256= given pins the original file; this copy holds the same weights in another file"
        found.append(Candidate(alternate.source, "alternate", alternate.sha256, note))
    return found


def _options_for(candidate: Candidate, storage_options: Mapping[str, Any], has_mirror: bool) -> dict[str, Any]:
    wanted = "mirror" if has_mirror else "original"
    return dict(storage_options) if candidate.kind == wanted else {}


def _reason(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}"


_MOVE_ON = (FetchError, ChecksumError, ConfigurationError)


def _moves_on(candidate: Candidate, exc: BaseException) -> bool:
    """Whether ``exc`` from ``candidate`` lets the next source be tried. A ``ConfigurationError`` does only for a Hub
    source (``clipkit[hub]`` missing): for the URLs it is the caller's setting (``storage_options``, the mirror) to fix."""
    return not isinstance(exc, ConfigurationError) or is_hub_source(candidate.source)


def fetch_named(
    name: str,
    entry: ModelSource,
    *,
    cache_dir: Path,
    registry: PluginRegistry,
    sha256: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    mirror: str | None = None,
    archive_only: bool = False,
) -> Served:
    """Fetch ``name``'s weights from the first of its sources that has them (see the module docstring); report which.

    Raises ``OfflineError`` offline when no cache holds a verified copy, and
    ``SourcesExhaustedError`` (a ``FetchError``) listing each source and why otherwise.
    """
    options = dict(storage_options or {})
    listed = candidates(entry, mirror=mirror, sha256=sha256, archive_only=archive_only)
    usable = [c for c in listed if not c.note]
    has_mirror = any(c.kind == "mirror" for c in usable)
    attempts: list[Attempt] = [Attempt(redact_url(c.source), f"skipped: {c.note}") for c in listed if c.note]

    def call(candidate: Candidate, where: Path) -> Path | None:
        return registry.call_first("fetch_checkpoint", source=candidate.source, cache_dir=where,
                                   sha256=candidate.sha256, storage_options=_options_for(candidate, options,
                                                                                          has_mirror))

    caches = [cache_dir]
    reference = REFERENCE_CACHE.expanduser()
    if reference.resolve() != cache_dir.expanduser().resolve():
        caches.append(reference)
    with fetching.cache_only():
        for candidate in usable:
            for where in _caches_holding(candidate, caches):
                try:
                    path = call(candidate, where)
                except _MOVE_ON as exc:
                    if not _moves_on(candidate, exc):
                        raise
                    if isinstance(exc, ChecksumError):  # a cached copy changed since it was verified: removed
                        _log.warning("%s: %s", name, _reason(exc))
                    attempts.append(Attempt(redact_url(candidate.source), f"not cached in {where}: {_reason(exc)}"))
                    continue
                if path is not None:
                    return _report(Served(name, Path(path), redact_url(candidate.source), True, tuple(attempts)))
    if fetching.is_offline():
        raise OfflineError(_exhausted_message(name, attempts, offline=True), source=name)
    network: list[Attempt] = []
    for candidate in usable:
        if is_hub_source(candidate.source) and _hub_offline():
            network.append(Attempt(redact_url(candidate.source), "not asked: HF_HUB_OFFLINE is set"))
            continue
        try:
            path = call(candidate, cache_dir)
        except _MOVE_ON as exc:
            if not _moves_on(candidate, exc):
                raise
            network.append(Attempt(redact_url(candidate.source), _reason(exc)))
            _log.info("%s: %s failed (%s); trying the next source", name, redact_url(candidate.source), _reason(exc))
            continue
        if path is None:
            network.append(Attempt(redact_url(candidate.source), "no fetcher handles it"))
            continue
        skipped = tuple(a for a in attempts if a.outcome.startswith("skipped"))
        return _report(Served(name, Path(path), redact_url(candidate.source), False, skipped + tuple(network)))
    every = tuple(a for a in attempts if a.outcome.startswith("skipped")) + tuple(network)
    raise SourcesExhaustedError(_exhausted_message(name, every, offline=False), source=name,
                                attempts=tuple((a.source, a.outcome) for a in every))


def _caches_holding(candidate: Candidate, caches: list[Path]) -> list[Path]:
    """Where to look for a cached copy: clipkit's cache always (Hub sources: the Hugging Face cache), another
    directory (the reference's) only when the file is there, so looking creates nothing."""
    if is_hub_source(candidate.source):
        return caches[:1]
    found = caches[:1]
    for where in caches[1:]:
        try:
            if fetching.cache_path(candidate.source, where, sha256=candidate.sha256).is_file():
                found.append(where)
        except ConfigurationError:
            pass
    return found


def _hub_offline() -> bool:
    from clipkit.fetching.hub import hub_offline

    return hub_offline()


def _exhausted_message(name: str, attempts: list[Attempt] | tuple[Attempt, ...], *, offline: bool) -> str:
    lines = "".join(f"\n  - {a.source}: {a.outcome}" for a in attempts)
    if offline:
        return (f"{name} is not in any cache, and offline mode is set (CLIPKIT_OFFLINE or HF_HUB_OFFLINE), so nothing "
                f"was downloaded. Sources looked at:{lines}\nFetch it once while online (clipkit fetch {name!r}), "
                f"or unset the offline variables.")
    return (f"{name} could not be fetched from any of its sources:{lines}\nCheck the network, set "
            f"{MIRROR_ENV} to a mirror that holds <sha256>/<file>, or load a local copy by path.")


def _report(served: Served) -> Served:
    with _served_lock:
        _served[served.name] = served
    failed_first = any(a.outcome != "served" and not a.outcome.startswith(("not cached", "skipped"))
                       for a in served.attempts)
    (_log.warning if failed_first else _log.info)("%s", served.describe())
    return served


def last_served(name: str) -> Served | None:
    """How ``name`` was served the last time this process fetched it (``None`` if it has not been)."""
    with _served_lock:
        return _served.get(name)


def cached_sources(entry: ModelSource, cache_dir: Path, *, mirror: str | None = None) -> list[tuple[Candidate, Path | None]]:
    """Each source of ``entry`` with its weights file on disk now, or ``None`` (no network, no hashing): for listings.

    A URL source is looked for in ``cache_dir`` and the reference's
    ``~/.cache/clip``; a Hub source in the Hugging Face cache. Loading still
    verifies whatever it uses.
    """
    from clipkit.fetching import hub
    from clipkit.layouts import choose_checkpoint

    found: list[tuple[Candidate, Path | None]] = []
    for candidate in candidates(entry, mirror=mirror):
        present: Path | None = None
        if is_hub_source(candidate.source):
            snapshot = hub.find_cached(candidate.source)
            if snapshot is not None and snapshot.is_dir():
                choice = choose_checkpoint(p.name for p in snapshot.iterdir() if p.is_file())
                present = snapshot / choice.weights if choice else None
            else:
                present = snapshot
        else:
            for where in (cache_dir, REFERENCE_CACHE.expanduser()):
                try:
                    slot = fetching.cache_path(candidate.source, where, sha256=candidate.sha256)
                except ConfigurationError:
                    continue
                if slot.is_file():
                    present = slot
                    break
        found.append((candidate, present))
    return found


__all__ = [
    "Attempt",
    "Candidate",
    "MIRROR_ENV",
    "Served",
    "cached_sources",
    "candidates",
    "fetch_named",
    "last_served",
    "mirror_base",
    "mirror_url",
]
