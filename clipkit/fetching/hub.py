"""Hugging Face Hub sources: ``hf-hub:<org>/<repo>[@revision]`` and ``hf://<org>/<repo>[@revision]/<file>``.

``huggingface_hub`` (the optional extra ``clipkit[hub]``) does the transport
and owns its cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``): files are downloaded there once and shared with
every other library that uses it. clipkit adds what it owns for every source:

* **Only the files needed.** ``hf-hub:`` lists the repo at the revision
  (``HfApi.model_info``), picks one checkpoint's files (a config and one
  weights file: see ``clipkit.layouts``) and downloads those alone
  (``snapshot_download(allow_patterns=...)``). ``hf://`` downloads one file
  (``hf_hub_download``) and, when it is a layout's weights file, that layout's
  config files beside it (same commit), so readers find them.
* **Integrity.** Every file is checked against the digest the Hub advertised
  for it, which ``huggingface_hub`` names its cached blob by (the ETag): an LFS
  file's SHA-256 (also compared with the listing's), a small file's git blob id.
  A mismatch removes the cached blob and its snapshot link and raises
  ``ChecksumError``. A verified blob gets a record in clipkit's cache
  (``.clipkit/hf-blobs/``), so it is not hashed again until it changes.
* **Offline.** With ``CLIPKIT_OFFLINE`` or ``HF_HUB_OFFLINE`` set (read at each
  call), the cache alone serves: a revision's ref or a commit's snapshot, no
  network at all; ``OfflineError`` when it is not there.
* ``HF_ENDPOINT`` and ``HF_TOKEN`` are read at each call; a revision (branch,
  tag or commit) pins the files; without one, ``main``. An ``HF_ENDPOINT``
  with credentials or a query is refused (``ConfigurationError``): the HTTP
  client would log it; the token belongs in ``HF_TOKEN``.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from clipkit.errors import (
    AccessDeniedError,
    CheckpointError,
    ChecksumError,
    ConfigurationError,
    FetchError,
    OfflineError,
    SourceNotFoundError,
)
from clipkit.fetching.hub_verify import RECORD_DIR, advertised_digest, verify_hub_file
from clipkit.fetching.hubref import HF_SCHEME, HUB_PREFIX, HubRef, is_hub_source, parse_hub_source
from clipkit.fetching.redact import redact_url
from clipkit.layouts import require_checkpoint

EXTRA_HINT = "pip install 'clipkit[hub]'"

_FALSY = frozenset({"", "0", "false", "no", "off"})

T = TypeVar("T")


def choose_checkpoint_files(names: Sequence[str], where: str = "the repo") -> list[str]:
    """The files of one checkpoint among ``names``, configs first, weights last (``clipkit.layouts`` decides).

    Raises ``CheckpointError`` listing the files when no layout fits.
    """
    return list(require_checkpoint(names, where).files)


# -- environment ------------------------------------------------------------------------


def hub_offline() -> bool:
    """Whether the Hub must not be contacted: ``CLIPKIT_OFFLINE`` or ``HF_HUB_OFFLINE`` set (read now, not at import)."""
    from clipkit.fetching import is_offline

    return is_offline() or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in _FALSY


def hf_cache_dir() -> Path:
    """The Hugging Face cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _endpoint() -> str | None:
    """``HF_ENDPOINT`` (trailing ``/`` dropped), refused with ``ConfigurationError`` when it carries a secret.

    ``huggingface_hub`` and httpx quote the endpoint in their own exceptions
    and INFO/DEBUG "HTTP Request:" log lines, where clipkit cannot mask it, so
    userinfo, a query, ``;params`` or a fragment are refused before any
    request (the message never echoes them): the Hub's token goes in HF_TOKEN.
    """
    value = os.environ.get("HF_ENDPOINT", "").strip()
    parts = urllib.parse.urlsplit(value)
    if "@" in parts.netloc or parts.query or parts.fragment or ";" in parts.path or "?" in value or "#" in value:
        raise ConfigurationError(
            f"HF_ENDPOINT={redact_url(value)} carries credentials or parameters (user:password@, ?query, ;params or "
            "#fragment); clipkit does not send secrets that way, where the HTTP client's logs would show them: set "
            "HF_ENDPOINT to the bare server URL and the token in HF_TOKEN"
        )
    return value.rstrip("/") or None


def _hub_module() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigurationError(
            f"Hugging Face Hub sources (hf-hub:, hf://) need huggingface_hub, which is not installed; {EXTRA_HINT}"
        ) from None
    return huggingface_hub


# -- errors -------------------------------------------------------------------------------


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _dns_failure(exc: BaseException) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 16:
        if isinstance(current, socket.gaierror) or "Name or service not known" in str(current) \
                or "nodename nor servname" in str(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _is_transient(exc: BaseException) -> bool:
    status = _status(exc)
    if status is not None:
        return status in (408, 425, 429) or status >= 500
    if _dns_failure(exc):
        return False
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "Timeout", "TimeoutException", "TimeoutError"})


def _translate(exc: BaseException, ref: HubRef, endpoint: str | None) -> Exception:
    """The clipkit error for an exception ``huggingface_hub`` raised while serving ``ref``."""
    name = type(exc).__name__
    where = f" at {redact_url(endpoint)}" if endpoint else ""
    status = _status(exc)
    if name == "GatedRepoError" or status in (401, 403) and name != "RepositoryNotFoundError":
        return AccessDeniedError(
            f"access to {ref} was refused by the Hub{where} ({name}); log in or set HF_TOKEN to a token that may "
            f"read {ref.repo_id} (and accept its terms on the Hub if it is gated)",
            source=str(ref),
        )
    if name == "RepositoryNotFoundError":
        return SourceNotFoundError(
            f"{ref}: the Hub{where} has no repo {ref.repo_id!r} (or it is private: set HF_TOKEN); check the name",
            source=str(ref),
        )
    if name == "RevisionNotFoundError":
        return SourceNotFoundError(f"{ref}: repo {ref.repo_id} has no revision {ref.revision!r}", source=str(ref))
    if name in ("RemoteEntryNotFoundError", "EntryNotFoundError") or status in (404, 410):
        return SourceNotFoundError(f"{ref}: the file is not in repo {ref.repo_id}{where} ({exc})", source=str(ref))
    if _dns_failure(exc):
        return FetchError(f"could not reach the Hub{where} for {ref}: the host name does not resolve ({exc})",
                          source=str(ref))
    return FetchError(f"could not fetch {ref} from the Hub{where}: {name}: {exc}", source=str(ref))


def _with_retries(call: Callable[[], T], ref: HubRef, endpoint: str | None) -> T:
    """Run ``call``, retrying transient failures (connection, 408/429/5xx) with clipkit's backoff settings."""
    from clipkit.fetching.settings import FetchSettings, back_off

    settings = FetchSettings.from_env()
    failures = 0
    while True:
        try:
            return call()
        except Exception as exc:  # huggingface_hub's errors, translated below
            if isinstance(exc, (ConfigurationError, ChecksumError, FetchError)):
                raise
            if _is_transient(exc) and failures < settings.max_retries:
                failures += 1
                back_off(settings.backoff(failures))
                continue
            raise _translate(exc, ref, endpoint) from exc


# -- fetching -------------------------------------------------------------------------------


def _listing(hub: Any, ref: HubRef, endpoint: str | None) -> tuple[str, dict[str, str | None]]:
    """The commit ``ref``'s revision points to and its files, each with its LFS SHA-256 (``None`` for small files)."""
    api = hub.HfApi(endpoint=endpoint)
    info = _with_retries(lambda: api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True),
                         ref, endpoint)
    files = {s.rfilename: (s.lfs.sha256 if s.lfs is not None else None) for s in (info.siblings or [])}
    return str(info.sha), files


def _cached_snapshot(hub: Any, ref: HubRef, cache: Path) -> Path:
    """The snapshot folder the cache holds for ``ref``'s revision, with no network; ``OfflineError`` if none.

    A snapshot holding only some of the repo's files (clipkit downloads one
    checkpoint's) is what is wanted: ``huggingface_hub`` calls it incomplete and
    says where it is; whether it holds a whole checkpoint is decided by the caller.
    """
    try:
        return Path(hub.snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache,
                                          local_files_only=True))
    except Exception as exc:
        partial = getattr(exc, "snapshot_path", None)
        if partial and Path(partial).is_dir():
            return Path(partial)
        if type(exc).__name__ in _OFFLINE_MISSES or isinstance(exc, FileNotFoundError):
            raise _not_cached_offline(ref, cache) from None
        raise



#: huggingface_hub's exceptions for "not in the cache, and the Hub may not be asked"
_OFFLINE_MISSES = ("LocalEntryNotFoundError", "OfflineModeIsEnabled")


def _not_cached_offline(ref: HubRef, cache: Any) -> OfflineError:
    """The error for ``ref`` missing from the Hugging Face cache ``cache`` while offline."""
    return OfflineError(
        f"{ref} is not in the Hugging Face cache ({cache}), and offline mode is set (CLIPKIT_OFFLINE or "
        f"HF_HUB_OFFLINE), so the Hub was not asked; fetch it once while online (clipkit fetch {ref})",
        source=str(ref),
    )


def find_cached(source: str) -> Path | None:
    """The Hugging Face cache's copy of a Hub source (snapshot folder or file), if it is there; no network, no hashing.

    For listings (``clipkit models``); loading verifies the files. ``None``
    when ``huggingface_hub`` is missing, the source is malformed or not cached.
    """
    try:
        ref = parse_hub_source(source)
        hub = _hub_module()
    except ConfigurationError:
        return None
    cache = hf_cache_dir()
    if ref.filename is not None:
        found = hub.try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=cache, revision=ref.revision)
        return Path(found) if isinstance(found, str) else None
    try:
        snapshot = _cached_snapshot(hub, ref, cache)
        choose_checkpoint_files([p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()])
    except Exception:  # not cached, incomplete, or no checkpoint in it
        return None
    return snapshot


def fetch_hub(source: str, *, sha256: str | None = None, records: Path | None = None) -> Path:
    """Return a local path for a Hub source, downloading into the Hugging Face cache only what is missing, verified.

    ``hf-hub:`` answers the snapshot folder holding one checkpoint's files
    (``choose_checkpoint_files``); ``hf://`` answers the one file (its layout's configs fetched beside it). Every file is
    checked against the digest the Hub advertised for it and, when ``sha256``
    is given, the weights file (or the ``hf://`` file) must also have that
    digest. ``records`` is where verified records are kept (clipkit's cache
    ``.clipkit/hf-blobs``). When the Hub cannot be reached, a cached copy of the
    revision serves, as ``huggingface_hub`` does. Raises ``ConfigurationError``
    (malformed source, ``clipkit[hub]`` missing), ``OfflineError``,
    ``SourceNotFoundError``, ``AccessDeniedError``, ``ChecksumError`` or ``FetchError``.
    """
    ref = parse_hub_source(source)
    hub = _hub_module()
    cache = hf_cache_dir()
    endpoint = _endpoint()
    if ref.filename is not None:
        path = _fetch_file(hub, ref, cache, endpoint, records)
        weights = path
    elif hub_offline():
        path, weights = _serve_cached(hub, ref, cache, records)
    else:
        try:
            path, weights = _download_checkpoint(hub, ref, cache, endpoint, records)
        except FetchError as exc:
            if type(exc) is not FetchError:  # not found, refused, offline: a cached copy would not be right
                raise
            try:
                path, weights = _serve_cached(hub, ref, cache, records)
            except OfflineError:
                raise exc from None
    if sha256 is not None:
        from clipkit.fetching import verify_file

        verify_file(weights, sha256, source=str(ref))
    return path


def _serve_cached(hub: Any, ref: HubRef, cache: Path, records: Path | None) -> tuple[Path, Path]:
    """The cached snapshot of ``ref`` and its weights file, verified, with no network."""
    snapshot = _cached_snapshot(hub, ref, cache)
    present = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    try:
        chosen = choose_checkpoint_files(present, f"the cached snapshot of {ref}")
    except CheckpointError as exc:
        raise OfflineError(f"{ref}: the cached snapshot {snapshot} holds no complete checkpoint ({exc}); "
                           f"fetch it once while online", source=str(ref)) from None
    for name in chosen:
        verify_hub_file(snapshot / name, ref, records=records)
    return snapshot, snapshot / chosen[-1]


def _download_checkpoint(hub: Any, ref: HubRef, cache: Path, endpoint: str | None,
                         records: Path | None) -> tuple[Path, Path]:
    """List the repo, download the chosen files (those missing from the cache), verify them."""
    commit, files = _listing(hub, ref, endpoint)
    chosen = choose_checkpoint_files(list(files), f"repo {ref.repo_id}")
    snapshot = Path(_with_retries(
        lambda: hub.snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=cache, endpoint=endpoint,
                                      allow_patterns=chosen),
        ref, endpoint,
    ))
    if snapshot.name != commit:  # the branch moved between the listing and the download: list that commit
        commit, files = _listing(hub, attrs.evolve(ref, revision=snapshot.name), endpoint)
    for name in chosen:
        verify_hub_file(snapshot / name, ref, listed_sha256=files.get(name), records=records)
    return snapshot, snapshot / chosen[-1]


def _fetch_file(hub: Any, ref: HubRef, cache: Path, endpoint: str | None, records: Path | None) -> Path:
    offline = hub_offline()
    try:
        path = _with_retries(
            lambda: hub.hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=cache,
                                        endpoint=endpoint, local_files_only=offline),
            ref, endpoint,
        )
    except FetchError as exc:
        cause = exc.__cause__
        if offline and cause is not None and type(cause).__name__ in _OFFLINE_MISSES:
            raise _not_cached_offline(ref, cache) from None
        raise
    weights = verify_hub_file(Path(path), ref, records=records)
    _fetch_side_configs(hub, ref, weights, cache, endpoint, offline, records)
    return weights


def _fetch_side_configs(hub: Any, ref: HubRef, weights: Path, cache: Path, endpoint: str | None, offline: bool,
                        records: Path | None) -> None:
    """Fetch the config files of the layout ``ref``'s file belongs to (``clipkit.layouts``), from the same commit,
    into the same snapshot folder: readers find them beside the weights. A config the repo lacks is skipped."""
    from clipkit.layouts import LAYOUTS

    folder, _, name = ref.filename.rpartition("/")
    configs = next((c for _, c, w in LAYOUTS if name in w), ())
    commit = weights.parents[ref.filename.count("/")].name
    for config in configs:
        wanted = f"{folder}/{config}" if folder else config
        try:
            found = hub.hf_hub_download(ref.repo_id, wanted, revision=commit, cache_dir=cache, endpoint=endpoint,
                                        local_files_only=offline)
        except Exception as exc:  # not in the repo (or not cached offline): the weights load without it
            if type(exc).__name__ in ("RemoteEntryNotFoundError", "EntryNotFoundError", "LocalEntryNotFoundError",
                                      "OfflineModeIsEnabled"):
                continue
            raise _translate(exc, attrs.evolve(ref, filename=wanted), endpoint) from exc
        verify_hub_file(Path(found), attrs.evolve(ref, filename=wanted), records=records)


__all__ = [
    "HF_SCHEME",
    "HUB_PREFIX",
    "RECORD_DIR",
    "HubRef",
    "advertised_digest",
    "choose_checkpoint_files",
    "fetch_hub",
    "find_cached",
    "hf_cache_dir",
    "hub_offline",
    "is_hub_source",
    "parse_hub_source",
    "verify_hub_file",
]
