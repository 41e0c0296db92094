"""safetensors: the model's weights in OpenAI's key layout, and a JSON sidecar with what the shapes cannot show.

``to_safetensors(model, "m.safetensors")`` writes ``m.safetensors`` and
``m.clipkit.json``. The sidecar holds exactly the spec fields that detection
would otherwise have to guess: the export runs detection on the written
weights' shapes and keeps every field it did not read off them (activation,
head counts, pooling, norm epsilons, preprocessing, ...). On reload the
built-in sidecar plugin (``clipkit.builtin.sidecar``) settles those fields,
recorded as coming from a config file, so ``clipkit.load`` assumes nothing and
warns about nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipkit.builtin.sidecar import SIDECAR_FORMAT, sidecar_path
from clipkit.errors import ClipkitError, ExportError
from clipkit.export._files import staged, write_json, write_safetensors
from clipkit.export.spec import model_spec
from clipkit.spec import ArchSpec, Provenance

__all__ = ["sidecar_document", "sidecar_fields", "to_safetensors"]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def sidecar_fields(state_dict: dict[str, torch.Tensor], spec: ArchSpec) -> dict[str, Any]:
    """The fields of ``spec`` that detecting ``state_dict`` would not read off its shapes, with ``spec``'s values.

    Detection runs on shape-only (meta) copies of the tensors, so nothing is
    read. Raises ``ExportError`` when the weights are not recognised, or when
    the detected spec with these fields is still not ``spec`` (a value the
    shapes show differently, such as a non-square input whose grid reads as
    square).
    """
    from clipkit.loader import detect_architecture

    shapes = {key: torch.empty(value.shape, dtype=value.dtype, device="meta") for key, value in state_dict.items()}
    try:
        detected = detect_architecture(shapes)
    except ClipkitError as exc:
        raise ExportError(f"the exported weights would not load back: {exc}") from exc
    fields = {name: getattr(spec, name) for name in detected.guessed_fields()}
    try:
        rebuilt = detected.with_values(fields, Provenance.caller())
    except (ClipkitError, TypeError) as exc:
        raise ExportError(f"the detected {type(detected).__name__} cannot take this model's fields: {exc}") from exc
    if type(rebuilt) is not type(spec) or rebuilt != spec:
        differing = [name for name in spec.to_dict() if getattr(rebuilt, name, None) != getattr(spec, name)]
        raise ExportError(
            f"these weights would reload as a different model ({', '.join(differing) or type(rebuilt).__name__} "
            f"differ from the shapes' reading); export to ONNX instead"
        )
    return fields


def sidecar_document(state_dict: dict[str, torch.Tensor], spec: ArchSpec) -> dict[str, Any]:
    """The spec sidecar of weights ``state_dict`` built as ``spec``: format, family and ``sidecar_fields``."""
    fields = sidecar_fields(state_dict, spec)
    return {
        "format": SIDECAR_FORMAT,
        "family": spec.family,
        "spec_class": type(spec).__name__,
        "fields": {name: _plain(value) for name, value in fields.items()},
    }


def to_safetensors(
    model: nn.Module, path: str | os.PathLike[str], *, spec: ArchSpec | None = None, overwrite: bool = False
) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors, OpenAI keys, the model's dtypes) and its spec sidecar.

    The sidecar (``path`` with the suffix ``.clipkit.json``) lists the fields
    that the shapes cannot show (see ``sidecar_fields``); ``spec`` defaults to
    the one ``clipkit.load`` attached to the model. Returns the weights' path;
    raises ``ExportError`` (nothing written) for a model that would not reload
    as itself, such as a single tower. An existing file or sidecar is refused
    (``ExportError``) unless ``overwrite``, which replaces each by a rename
    once the new ones are complete.
    """
    spec = model_spec(model, spec)
    path = Path(path)
    state_dict = {key: value.detach() for key, value in model.state_dict().items()}
    sidecar = sidecar_document(state_dict, spec)
    with staged(path, (sidecar_path(path).name, path.name), overwrite=overwrite) as stage:
        write_safetensors(state_dict, stage / path.name, metadata={"clipkit_family": spec.family})
        write_json(sidecar, stage / sidecar_path(path).name)
    return path
