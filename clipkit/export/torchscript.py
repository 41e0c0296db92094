"""TorchScript: trace a loaded model into an archive shaped like the official releases.

The archive has traced ``forward``, ``encode_image`` and ``encode_text`` and
the releases' 0-dim int64 buffers (``input_resolution``, ``context_length``,
``vocab_size``), so ``clipkit.load(path, jit=True)``, ``clip.load`` and
open_clip's ``load_openai_model`` all read it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from clipkit.builtin.sidecar import ARCHIVE_ENTRY
from clipkit.errors import JITError
from clipkit.export._files import staged
from clipkit.export.safetensors import sidecar_document
from clipkit.jit import _CLIP_METHODS, _quiet_torchscript
from clipkit.spec import ArchSpec

__all__ = ["to_torchscript"]


def to_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int = 2,
    spec: ArchSpec | None = None,
    overwrite: bool = False,
) -> Path:
    """Trace ``model`` into a TorchScript archive at ``path`` shaped like the official releases; return the path.

    The archive has traced ``forward(image, text)``, ``encode_image(image)`` and
    ``encode_text(text)``, and the official 0-dim int64 buffers
    ``input_resolution``, ``context_length`` and ``vocab_size`` next to the
    weights. ``model`` needs ``encode_image``, ``encode_text`` and
    ``visual.input_resolution`` (a clipkit model, or OpenAI's). With ``device``
    or ``dtype`` the model is traced on that device or in that precision (as
    the releases: float16 with norms kept in float32, by
    ``clipkit.nn.cast_model``) on a copy; ``model`` itself is never changed.
    The graph is specialised to what tracing sees: the device and dtype above
    (``load_jit`` patches them) and any batch size is fine.

    The archive also carries the spec sidecar ``to_safetensors`` writes (the
    fields the shapes cannot show, from ``spec`` or the ``clipkit_spec``
    ``clipkit.load`` attached) as its extra file ``extra/clipkit.json``, so a
    plain ``clipkit.load(path)`` (``jit=False``) rebuilds the same model with
    nothing assumed; a model without a spec is exported without it. An
    existing ``path`` is refused (``ExportError``) unless ``overwrite``, which
    replaces it by one rename once the new archive is complete.
    """
    for name in (*_CLIP_METHODS, "forward"):
        if not callable(getattr(model, name, None)):
            raise JITError(
                f"cannot export {type(model).__name__}: it has no {name}() method, so it is not a CLIP model"
            )
    metadata = _export_metadata(model)
    if isinstance(metadata["input_resolution"], tuple):
        raise JITError(
            f"cannot export a {metadata['input_resolution']} (height, width) model to TorchScript: the release-shaped "
            "archive records one square input_resolution; export it to ONNX instead"
        )
    work = model
    if device is not None or dtype is not None or any(m.training for m in model.modules()):
        work = copy.deepcopy(model).eval()
        if dtype is not None:
            from clipkit.nn import cast_model

            cast_model(work, dtype)
        if device is not None:
            work.to(torch.device(device))
    carrier = _with_buffers(work, metadata)
    extra_files = _spec_sidecar(model, spec)
    param = next(work.parameters())
    generator = torch.Generator().manual_seed(0)
    resolution, context, vocab = metadata["input_resolution"], metadata["context_length"], metadata["vocab_size"]
    image = torch.randn((batch_size, 3, resolution, resolution), generator=generator).to(param.device)
    text = torch.randint(0, vocab, (batch_size, context), generator=generator).to(param.device)
    with _quiet_torchscript(), torch.no_grad():
        traced = torch.jit.trace_module(
            carrier,
            {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)},
            check_trace=False,
        )
        path = Path(path)
        with staged(path, (path.name,), overwrite=overwrite) as stage:  # the archive appears whole or not at all
            torch.jit.save(traced, str(stage / path.name), _extra_files=extra_files)
    return path


def _spec_sidecar(model: nn.Module, spec: ArchSpec | None) -> dict[str, str]:
    """The archive's extra files: the spec sidecar when the model has a spec (a loaded archive's stand-in is none)."""
    spec = spec if spec is not None else getattr(model, "clipkit_spec", None)
    if not isinstance(spec, ArchSpec) or spec.family == "torchscript":
        return {}
    state_dict = {key: value.detach() for key, value in model.state_dict().items()}
    return {ARCHIVE_ENTRY: json.dumps(sidecar_document(state_dict, spec), indent=2)}


def _export_metadata(model: nn.Module) -> dict[str, int]:
    visual = getattr(model, "visual", None)
    resolution = getattr(visual, "input_resolution", None)
    if resolution is None:
        resolution = getattr(visual, "image_size", None)
    if isinstance(resolution, (tuple, list)):
        resolution = resolution[0] if resolution[0] == resolution[1] else tuple(resolution)
    context = getattr(model, "context_length", None)
    if context is None and isinstance(getattr(model, "positional_embedding", None), torch.Tensor):
        context = model.positional_embedding.shape[0]
    vocab = getattr(model, "vocab_size", None)
    if vocab is None and isinstance(getattr(model, "token_embedding", None), nn.Embedding):
        vocab = model.token_embedding.num_embeddings
    values = {"input_resolution": resolution, "context_length": context, "vocab_size": vocab}
    bad = [name for name, value in values.items()
           if isinstance(value, bool) or not isinstance(value, (int, tuple))]
    if bad:
        raise JITError(
            f"cannot export {type(model).__name__}: cannot tell its {', '.join(bad)} (expected "
            "visual.input_resolution, context_length and vocab_size as ints, as clipkit and OpenAI models have)"
        )
    return values  # type: ignore[return-value]


def _with_buffers(model: nn.Module, metadata: dict[str, int]) -> nn.Module:
    """A shallow copy of ``model`` (sharing its submodules and tensors) with the metadata as extra buffers.

    The buffers go straight into the copy's buffer table: a model may already
    answer ``context_length`` through a property or a plain attribute, which
    the code being traced keeps using, while the archive records the buffer.
    """
    carrier = copy.copy(model)
    carrier._parameters = dict(model._parameters)
    carrier._buffers = dict(model._buffers)
    carrier._modules = dict(model._modules)
    device = next(model.parameters()).device
    for name, value in metadata.items():
        carrier.__dict__.pop(name, None)
        carrier._buffers[name] = torch.tensor(value, dtype=torch.int64, device=device)
    return carrier
