"""The pipeline: source -> local file -> state dict -> ArchSpec -> model on device, plus its preprocessing.

Each step is one call; every decision about a family is a hook call, so the
core never names ResNet or ViT.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from clipkit import adapt, checkpoint, provenance, settle
from clipkit.errors import (
    AmbiguousArchitectureError,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigurationError,
    NoClaimantError,
    NoFetcherError,
    PluginError,
    StateDictError,
    UnknownModelError,
)
from clipkit.fetching.hub import is_hub_source
from clipkit.fetching.redact import redact_url
from clipkit.inputs import check_regular_file, check_source_argument
from clipkit.nn import cast_model, skip_init_on_meta
from clipkit.plugins import PluginRegistry, PluginWarning, get_registry
from clipkit.spec import ArchSpec, ModelSource, check_sha256

DEFAULT_CACHE = Path("~/.cache/clip")


# -- names and sources ------------------------------------------------------------------


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
    local = Path(text).expanduser()
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


# -- architecture ---------------------------------------------------------------------------


def detect_architecture(
    state_dict: Mapping[str, torch.Tensor], path: Path | None = None, *, registry: PluginRegistry | None = None
) -> ArchSpec:
    """Ask every plugin whether it recognises ``state_dict``; return the one claimant's ``ArchSpec``.

    Raises ``NoClaimantError`` (listing the plugins asked and what each looks
    for) or ``AmbiguousArchitectureError`` (naming the claimants).
    """
    registry = registry or get_registry()
    answers, failures = registry.call_all(
        "detect_architecture", returns=(ArchSpec, "a clipkit.ArchSpec subclass"), state_dict=state_dict, path=path
    )
    if len(answers) > 1:
        claims = "\n".join(
            f"  - {name} ({registry.plugin_doc(name) or 'no description'}): {spec!r}" for name, spec in answers
        )
        raise AmbiguousArchitectureError(
            f"{len(answers)} plugins claim this checkpoint:\n{claims}\nUninstall one of them, or disable it "
            "with CLIPKIT_DISABLE_PLUGINS=<entry-point name> (plugins must claim only their own key/shape signature).",
            claimants=[name for name, _ in answers],
        )
    if not answers:
        asked = "\n".join(
            f"  - {name}: {registry.plugin_doc(name) or 'no description'}"
            for name in registry.plugin_names("detect_architecture")
        )
        broken = "".join(f"\n  ! {failure}" for failure in failures)
        sample = ", ".join(list(state_dict)[:6])
        raise NoClaimantError(
            f"no plugin recognised this checkpoint{f' ({path})' if path else ''}; its first keys are: {sample}.\n"
            f"Plugins asked:\n{asked}{broken}\n"
            "If it is a CLIP variant, install the plugin for its family."
        )
    return answers[0][1]


#: the caller's keywords applied to a spec, each recorded as ``CALLER`` (see ``clipkit.provenance``)
apply_overrides = provenance.apply_overrides


def build_model(
    spec: ArchSpec, *, registry: PluginRegistry | None = None, device: str | torch.device = "meta"
) -> torch.nn.Module:
    """Build the module ``spec`` describes through ``build_model``, by default on the meta device (nothing allocated or initialised)."""
    registry = registry or get_registry()
    with torch.device(device), skip_init_on_meta():
        model = registry.call_first("build_model", returns=(torch.nn.Module, "an nn.Module"), spec=spec)
    if model is None:
        raise ConfigurationError(
            f"no plugin builds family {spec.family!r} ({type(spec).__name__}); "
            f"install the plugin that detected it or check its build_model hook"
        )
    return model


def build_for_loading(spec: ArchSpec, *, registry: PluginRegistry | None = None) -> torch.nn.Module:
    """Build the model on the meta device, or for real on the CPU when it holds tensors no checkpoint can fill.

    Some plugins compute tensors at construction (a causal mask as a
    non-persistent buffer, say); on the meta device those would have no values.
    """
    model = build_model(spec, registry=registry)
    if meta_tensors_outside_state_dict(model):
        model = build_model(spec, registry=registry, device="cpu")
    return model


def make_transform(spec: ArchSpec, *, registry: PluginRegistry | None = None) -> Callable[[Any], torch.Tensor]:
    """The image preprocessing for ``spec`` from the first ``make_transform`` plugin that answers."""
    registry = registry or get_registry()
    transform = registry.call_first("make_transform", spec=spec)
    if transform is None:  # only possible when the built-in default was unregistered
        raise ConfigurationError(f"no plugin makes a transform for family {spec.family!r}")
    return transform


# -- weights, dtype, device -------------------------------------------------------------------


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into the meta-device ``model`` by assignment (no copy), strictly.

    Raises ``StateDictError`` listing missing, unexpected and mis-shaped keys, or
    any tensor of the model left without a value.
    """
    try:
        result = model.load_state_dict(state_dict, strict=False, assign=True)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    except RuntimeError as exc:  # torch reports size mismatches only by raising
        expected = model.state_dict()
        mismatched = [
            (key, tuple(expected[key].shape), tuple(value.shape))
            for key, value in state_dict.items()
            if key in expected and tuple(expected[key].shape) != tuple(value.shape)
        ]
        if not mismatched:  # the keys were remapped by a plugin's pre-hook: torch's words are all we have
            raise StateDictError(f"the checkpoint does not fit the model: {exc}") from exc
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            parts.append(
                "wrong shapes: "
                + ", ".join(f"{k} (model {list(a)}, checkpoint {list(b)})" for k, a, b in mismatched)
            )
        raise StateDictError(
            "the checkpoint does not fit the architecture detected from it; "
            + "; ".join(parts)
            + ". The file may be damaged, or a plugin mis-detected it.",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    left = [name for name, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if left:
        raise StateDictError(
            f"the model built for this checkpoint has tensors the checkpoint does not provide: {', '.join(left)}; "
            "the plugin's build_model must create only tensors that are in the state dict",
            missing=left,
        )


def meta_tensors_outside_state_dict(model: torch.nn.Module) -> list[str]:
    """Names of meta tensors a module holds outside its state dict (non-persistent buffers, tensor attributes).

    A model built on the meta device cannot get values for these from a
    checkpoint: they were computed at construction (a causal mask, say).
    """
    names = []
    for prefix, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None and buffer.is_meta:
                names.append(f"{prefix}.{name}".lstrip("."))
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter) and value.is_meta:
                names.append(f"{prefix}.{name}".lstrip("."))
    return names


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The target device: ``device`` if given (checked to exist), else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(f"{device!r} is not a device; use 'cpu', 'cuda', 'cuda:1' or 'mps'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device!r} was asked for but CUDA is not available; pass device='cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigurationError(
            f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigurationError(f"device {device!r} was asked for but MPS is not available; pass device='cpu'")
    return resolved


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The weights' dtype: ``dtype`` if given, else float16 on CUDA and float32 elsewhere (as the reference)."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    given = dtype
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigurationError(f"dtype must be a floating torch.dtype such as torch.float16, got {given!r}")
    return dtype


def place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating tensors to ``dtype`` and move everything to ``device``, one conversion per tensor.

    Normalisation layers, modules whose class sets ``keep_fp32 = True`` and
    parameters a module lists in ``fp32_parameters`` stay float32 when ``dtype``
    is narrower, as the reference keeps them (see ``clipkit.nn.cast_model``).
    """
    return cast_model(model, dtype, device=device)


def _read_source(path: Path, source: str | os.PathLike[str], sha256: str | None,
                 registry: PluginRegistry) -> dict[str, torch.Tensor]:
    """Read ``path``; if it is a download that is not a checkpoint, its fetcher may drop it (``forget_checkpoint``).

    Without a digest, an error page served with status 200 would otherwise stay
    cached and be served again on every load.
    """
    try:
        return checkpoint.read_state_dict(path)
    except CheckpointError as exc:
        text = os.fspath(source)
        if isinstance(exc, CheckpointNotFoundError) or "://" not in text:
            raise
        if registry.call_first("forget_checkpoint", source=text, path=path, sha256=sha256):
            exc.args = (
                f"{exc}\nThe download from {redact_url(text)} was removed from the cache (no digest vouched for it); "
                "check the URL, then load again to download it afresh.",
            )
        raise


# -- the public calls -------------------------------------------------------------------------------


def load(
    source: str | os.PathLike[str],
    device: str | torch.device | None = None,
    jit: bool = False,
    download_root: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    image_resolution: int | tuple[int, int] | None = None,
    context_length: int | None = None,
    tower: str | None = None,
    mirror: str | None = None,
    **spec_overrides: Any,
) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]:
    """Load a CLIP checkpoint and return ``(model, preprocess)``, like the reference ``clip.load``.

    ``source`` is a registered name (``clipkit.available_models()``), a local
    file or directory, or a URL (``file://``, ``https://``, ``s3://``, any
    fsspec protocol). The model is in eval mode on ``device`` (default: CUDA if
    available, else CPU) with float16 weights on CUDA and float32 elsewhere
    unless ``dtype`` says otherwise. ``jit=True`` runs the TorchScript archive
    itself, its graphs patched for the device. ``download_root`` is the cache
    directory; ``sha256`` the expected digest; ``storage_options`` go to fsspec;
    ``mirror`` (else ``$CLIPKIT_MIRROR``) serves registered names' files as
    ``<mirror>/<sha256>/<file>``, tried first. Any other keyword overrides a
    field of the detected spec that shapes cannot show, e.g. ``quick_gelu=False``
    for weights trained with GELU.

    ``image_resolution`` (a side, or ``(height, width)``) and ``context_length``
    adapt the model to another input size or text length (positional
    embeddings resized, see ``clipkit.adapt``; the transform matches).
    ``tower="image"`` or ``"text"`` returns that encoder alone; the other
    tower's tensors are never read nor allocated.
    """
    target = resolve_device(device)
    weights_dtype = resolve_dtype(dtype, target)
    path = resolve_source(source, download_root=download_root, sha256=sha256, storage_options=storage_options,
                          mirror=mirror, archive_only=jit)
    registry = get_registry()
    adaptations = {"image_resolution": image_resolution, "context_length": context_length, "tower": tower}
    if jit:
        spec_overrides.update({key: value for key, value in adaptations.items() if value is not None})
        if spec_overrides:
            raise ConfigurationError(
                f"options {', '.join(spec_overrides)} change the architecture and cannot apply to a TorchScript "
                "archive run as is; pass jit=False"
            )
        from clipkit import jit as jit_loader

        model, resolution = jit_loader.load_jit(path, target, dtype=weights_dtype)
        model.clipkit_spec = ArchSpec(family="torchscript", image_resolution=resolution)  # for get_tokenizer
        return model, make_transform(model.clipkit_spec, registry=registry)
    state_dict = _read_source(path, source, sha256, registry)
    spec = settle.settle(detect_architecture(state_dict, path, registry=registry), path, source=source, sha256=sha256,
                         overrides=spec_overrides, models=registered_models(registry), cache_dir=cache_dir(download_root),
                         registry=registry)
    spec, state_dict = adapt.resize(state_dict, spec, image_resolution=image_resolution,
                                    context_length=context_length, tower=tower, registry=registry)
    provenance.warn_assumptions(spec, os.fspath(source))
    model = build_for_loading(spec, registry=registry)
    if tower is not None:
        model, state_dict = adapt.one_tower(model, spec, tower, state_dict, registry=registry)
    load_weights(model, state_dict)
    place(model, target, weights_dtype)
    model.eval()
    model.clipkit_spec = spec  # what clipkit.get_tokenizer(model) asks the plugins about
    return model, make_transform(spec, registry=registry)


def inspect(
    source: str | os.PathLike[str],
    *,
    download_root: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    mirror: str | None = None,
) -> ArchSpec:
    """Detect the architecture of ``source`` without building the model; return its ``ArchSpec``.

    The spec is settled as ``clipkit.load`` settles it (a config beside the
    weights, the official release table), and ``spec.provenance`` says where
    each field's value came from.
    """
    path = resolve_source(source, download_root=download_root, sha256=sha256, storage_options=storage_options,
                          mirror=mirror)
    registry = get_registry()
    spec = detect_architecture(_read_source(path, source, sha256, registry), path, registry=registry)
    return settle.settle(spec, path, source=source, sha256=sha256, overrides={}, models=registered_models(registry),
                         cache_dir=cache_dir(download_root), registry=registry)
