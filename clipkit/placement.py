"""Weights into a model built on the meta device, and the model onto its device and dtype: the load's last steps."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clipkit.errors import ConfigurationError, StateDictError
from clipkit.nn import cast_model

__all__ = ["load_weights", "meta_tensors_outside_state_dict", "place", "resolve_device", "resolve_dtype"]


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


_PLACEABLE = frozenset({"cpu", "cuda", "mps"})


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The target device: ``device`` if given (checked to exist), else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(f"{device!r} is not a device; use 'cpu', 'cuda', 'cuda:1' or 'mps'") from exc
    if resolved.type not in _PLACEABLE:
        raise ConfigurationError(
            f"device {device!r} is not one clipkit can load weights onto ({resolved.type!r} holds no values or is not "
            "supported); use 'cpu', 'cuda', 'cuda:1' or 'mps'"
        )
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
