"""The pipeline: source -> local file -> state dict -> ArchSpec -> model on device, plus its preprocessing.

Each step is one call; every decision about a family is a hook call, so the
core never names ResNet or ViT.
"""

from __future__ import annotations

import os
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
)
from clipkit.fetching.redact import redact_url
from clipkit.nn import skip_init_on_meta
from clipkit.placement import load_weights, meta_tensors_outside_state_dict, place, resolve_device, resolve_dtype
from clipkit.plugins import PluginRegistry, get_registry
from clipkit.resolve import DEFAULT_CACHE, available_models, cache_dir, registered_models, resolve_source
from clipkit.spec import ArchSpec

__all__ = [
    # the pipeline's own steps
    "apply_overrides",
    "build_for_loading",
    "build_model",
    "detect_architecture",
    "inspect",
    "load",
    "make_transform",
    # its first and last steps, kept importable from here (clipkit.resolve, clipkit.placement)
    "DEFAULT_CACHE",
    "available_models",
    "cache_dir",
    "load_weights",
    "meta_tensors_outside_state_dict",
    "place",
    "registered_models",
    "resolve_device",
    "resolve_dtype",
    "resolve_source",
]


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
    image_resolution, context_length = adapt.check_sizes(image_resolution, context_length)
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
    provenance.require_settled(spec, redact_url(os.fspath(source)))
    provenance.warn_assumptions(spec, redact_url(os.fspath(source)))
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
