"""ONNX: one graph per tower with a dynamic batch, checked under onnxruntime against the torch model.

``image.onnx`` maps ``image`` ``[batch, 3, H, W]`` float32 to ``image_embeds``
``[batch, embed_dim]``; ``text.onnx`` maps ``text`` ``[batch, context_length]``
int64 token ids to ``text_embeds``. Both are unnormalised, as
``encode_image``/``encode_text``; ``logit_scale``, the input size and the
context length are in each file's metadata (``metadata_props``).

Graphs are written by torch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``): it needs only ``onnx``, while the
newer dynamo exporter also needs ``onnxscript``. Every export is verified: the
graph runs under onnxruntime on a batch of another size than the traced one,
and its outputs must equal the torch model's within ``atol`` (1e-4 in float32),
or nothing is written and ``ExportError`` says by how much they differed.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipkit.errors import ConfigurationError, ExportError
from clipkit.export._files import staged

__all__ = ["to_onnx"]

EXTRA_HINT = "pip install 'clipkit[onnx]'"

#: tower -> (encoder method, input name, output name)
_TOWERS: dict[str, tuple[str, str, str]] = {
    "image": ("encode_image", "image", "image_embeds"),
    "text": ("encode_text", "text", "text_embeds"),
}


class _Encoder(nn.Module):
    """One encoder method of a model as ``forward``, so the exporter traces just that tower."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(inputs)


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigurationError(f"ONNX export needs onnx and onnxruntime ({exc}); {EXTRA_HINT}") from None
    return onnx, onnxruntime


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notices about itself (deprecation, tracing) for a caller who asked for ONNX."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator", category=UserWarning)
        yield


def _towers_of(model: nn.Module, tower: str | None) -> list[str]:
    available = [name for name, (method, _, _) in _TOWERS.items() if callable(getattr(model, method, None))]
    if tower is None:
        if not available:
            raise ExportError(f"{type(model).__name__} has neither encode_image nor encode_text: not a CLIP tower")
        return available
    if tower not in _TOWERS:
        raise ConfigurationError(f"tower must be 'image' or 'text', got {tower!r}")
    if tower not in available:
        raise ExportError(f"this {type(model).__name__} has no {_TOWERS[tower][0]}(): it holds no {tower} tower")
    return [tower]


def _example(model: nn.Module, tower: str, batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if tower == "image":
        resolution = model.visual.input_resolution
        height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
        return torch.randn((batch, 3, height, width), generator=generator)
    context, vocab = int(model.context_length), int(model.vocab_size)
    tokens = torch.randint(1, vocab - 1, (batch, context), generator=generator)
    ends = torch.randint(1, context, (batch,), generator=generator)
    tokens[torch.arange(batch), ends] = vocab - 1  # an end-of-text token: each row's highest id
    return tokens


def _metadata(model: nn.Module, tower: str) -> dict[str, str]:
    found = {"producer": "clipkit", "tower": tower}
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        found["logit_scale"] = repr(float(scale.detach().float().reshape(-1)[0]))
    if tower == "image":
        found["input_resolution"] = repr(model.visual.input_resolution)
    else:
        found["context_length"] = str(int(model.context_length))
    return found


def _for_export(model: nn.Module) -> nn.Module:
    """``model`` in float32 on the CPU in eval mode: itself if it already is, else a copy."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.int64) for t in tensors) and not model.training:
        return model
    return copy.deepcopy(model).float().to("cpu").eval()


def to_onnx(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    tower: str | None = None,
    opset: int = 17,
    batch_size: int = 2,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Export ``model``'s towers as ONNX graphs into the folder ``out``; return ``{tower: path}``.

    ``tower`` (``"image"`` or ``"text"``) exports one; by default every tower
    the model has (a ``tower=``-loaded model has one). The model runs in
    float32 on the CPU (a copy when it is not already). Each graph is traced
    with ``batch_size`` and has a dynamic batch axis; it is then run under
    onnxruntime on ``batch_size + 1`` inputs and must match torch within
    ``atol``, else ``ExportError`` and no file is left. An existing ``out``
    that holds anything is refused (``ExportError``) unless ``overwrite``,
    which replaces the whole folder once the new one is complete. Needs the
    ``onnx`` extra (``pip install 'clipkit[onnx]'``).
    """
    onnx, onnxruntime = _import_onnx()
    towers = _towers_of(model, tower)
    work = _for_export(model)
    written: dict[str, Path] = {}
    with staged(out, overwrite=overwrite) as stage, torch.no_grad():
        for name in towers:
            method, input_name, output_name = _TOWERS[name]
            file = stage / f"{name}.onnx"
            with _quiet_exporter():
                torch.onnx.export(  # an eval-mode wrapper: the exporter restores the wrapper's mode on exit
                    _Encoder(work, method).eval(), (_example(work, name, batch_size, seed=0),), str(file),
                    dynamo=False, opset_version=opset, input_names=[input_name], output_names=[output_name],
                    dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                )
            graph = onnx.load(str(file))
            onnx.checker.check_model(graph)
            for key, value in _metadata(work, name).items():
                graph.metadata_props.add(key=key, value=value)
            onnx.save(graph, str(file))
            _verify(onnxruntime, file, work, name, batch_size + 1, atol)
            written[name] = Path(out) / file.name
    return written


def _verify(onnxruntime: Any, file: Path, model: nn.Module, tower: str, batch: int, atol: float) -> None:
    method, input_name, _ = _TOWERS[tower]
    inputs = _example(model, tower, batch, seed=1)
    expected = getattr(model, method)(inputs).float().numpy()
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {input_name: inputs.numpy()})
    if got.shape != expected.shape:
        raise ExportError(f"the exported {tower} graph gives shape {got.shape} for a batch of {batch}, torch {expected.shape}")
    diff = float(abs(got - expected).max())
    if not diff <= atol:
        raise ExportError(
            f"the exported {tower} graph differs from the torch model by {diff:.3g} (allowed {atol:g}) under "
            "onnxruntime; nothing was written. Report it with the model's family and torch/onnx versions"
        )
