"""Source to local file: registered names (first registration wins), local paths, then the ``fetch_checkpoint`` plugins."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipkit.errors import CheckpointNotFoundError, NoFetcherError, PluginError, UnknownModelError
from clipkit.fetching.hub import is_hub_source
from clipkit.fetching.redact import redact_url
from clipkit.inputs import check_regular_file, check_source_argument, local_path
from clipkit.plugins import PluginRegistry, PluginWarning, get_registry
from clipkit.spec import ModelSource, check_sha256

__all__ = ["DEFAULT_CACHE", "available_models", "cache_dir", "registered_models", "resolve_source"]

DEFAULT_CACHE = Path("~/.cache/clip")


def _merged_models(registry: PluginRegistry) -> tuple[dict[str, ModelSource], dict[str, list[str]]]:
    """All registered names (first registration wins) and, for names offered twice, every plugin offering them."""
    cached = registry.cache.get("models")
    if cached is not None:
        return cached
    answers, _ = registry.call_all("register_models")
    merged: dict[str, ModelSource] = {}
    owners: dict[str, list[str]] = {}
    for plugin_name, models in reversed(answers):  # registration order: built-ins first
        for name, source in dict(models).items():
            if not isinstance(source, ModelSource):
                raise PluginError(
                    f"plugin {plugin_name!r} registered {name!r} as {type(source).__name__}, "
                    "expected clipkit.ModelSource",
                    plugin=plugin_name,
                    hook="register_models",
                )
            owners.setdefault(name, []).append(plugin_name)
            merged.setdefault(name, source)
    duplicates = {name: plugins for name, plugins in owners.items() if len(plugins) > 1}
    registry.cache["models"] = (merged, duplicates)
    return merged, duplicates


def _duplicate_message(name: str, plugins: list[str]) -> str:
    return (
        f"model name {name!r} is registered by both {plugins[0]!r} and {plugins[1]!r}; "
        "uninstall or disable one of the plugins (CLIPKIT_DISABLE_PLUGINS), or load the checkpoint by URL"
    )


def registered_models(registry: PluginRegistry | None = None) -> dict[str, ModelSource]:
    """Every name offered by a ``register_models`` plugin, in registration order (built-ins first).

    A name offered by two plugins keeps its first registration here; loading it
    by that name raises ``PluginError``, since it is unclear which one was meant.
    """
    return dict(_merged_models(registry or get_registry())[0])


def available_models() -> list[str]:
    """The names ``clipkit.load`` accepts: the nine official releases plus any a plugin registers.

    A name that two plugins register is listed once, with a ``PluginWarning``.
    """
    merged, duplicates = _merged_models(get_registry())
    for name, plugins in duplicates.items():
        warnings.warn(_duplicate_message(name, plugins), PluginWarning, stacklevel=2)
    return list(merged)


def cache_dir(download_root: str | os.PathLike[str] | None = None) -> Path:
    """Where downloads go: ``download_root``, else ``$CLIPKIT_CACHE``, else ``~/.cache/clip`` (the reference's)."""
    chosen = download_root or os.environ.get("CLIPKIT_CACHE") or DEFAULT_CACHE
    return Path(chosen).expanduser()


def resolve_source(
    source: str | os.PathLike[str],
    *,
    download_root: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    registry: PluginRegistry | None = None,
    mirror: str | None = None,
    archive_only: bool = False,
) -> Path:
    """Turn ``source`` into a local checkpoint path, fetching it if needed.

    A registered name resolves through its sources in order (``mirror`` or
    ``$CLIPKIT_MIRROR``, its URL, its Hub copies; any cached copy first: see
    ``clipkit.model_sources``); an existing local path is used in place (its digest
    checked when one is given); anything else goes to the ``fetch_checkpoint``
    plugins (``archive_only``: only a name's own file, for ``jit=True``). Raises
    ``UnknownModelError`` for a name that is none of these and
    ``CheckpointNotFoundError`` for a missing path.
    """
    registry = registry or get_registry()
    sha256 = check_sha256(sha256)
    check_source_argument(source)
    text = os.fspath(source)
    if not isinstance(source, os.PathLike):
        models, duplicates = _merged_models(registry)
        if text in duplicates:
            raise PluginError(_duplicate_message(text, duplicates[text]), hook="register_models")
        if text in models:
            from clipkit.model_sources import fetch_named

            return fetch_named(text, models[text], cache_dir=cache_dir(download_root), registry=registry,
                               sha256=sha256, storage_options=storage_options, mirror=mirror,
                               archive_only=archive_only).path
    local = local_path(text) if "://" not in text else Path(text)
    if "://" not in text and not is_hub_source(text):
        if local.exists():
            check_regular_file(local)
            if sha256 is not None:
                from clipkit.fetching import verify_file

                verify_file(local, sha256, source=text)
            return local
        looks_like_path = os.sep in text or bool(local.suffix)
        if isinstance(source, os.PathLike) or (looks_like_path and local.parent.is_dir()):
            raise CheckpointNotFoundError(f"checkpoint not found: {local}")
        raise UnknownModelError.for_name(text, list(registered_models(registry)))
    return _fetch(text, sha256, download_root, storage_options, registry)


def _fetch(
    url: str,
    sha256: str | None,
    download_root: str | os.PathLike[str] | None,
    storage_options: Mapping[str, Any] | None,
    registry: PluginRegistry,
) -> Path:
    target_dir = cache_dir(download_root)
    result = registry.call_first(
        "fetch_checkpoint",
        source=url,
        cache_dir=target_dir,
        sha256=sha256,
        storage_options=dict(storage_options or {}),
    )
    if result is None:
        raise NoFetcherError.for_source(redact_url(url), url.split("://", 1)[0], registry.plugin_names("fetch_checkpoint"))
    return Path(result)
