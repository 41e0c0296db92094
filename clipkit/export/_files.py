"""Writing export files whole or not at all, and the safetensors format (no dependency needed to write it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from clipkit.errors import ExportError

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@contextlib.contextmanager
def staged(out: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write into; its files move into ``out`` only if the block succeeds.

    On any exception the staging folder is removed, so an export never leaves
    a partial file behind. Files already in ``out`` with other names stay.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".clipkit-export-", dir=out))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) to a safetensors file at ``path``; return the path.

    The header lists the entries in key order with 8-byte-aligned offsets, as
    the reference writer does; ``metadata`` becomes its ``__metadata__``.
    """
    path = Path(path)
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    payload: list[torch.Tensor] = []
    offset = 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        if tensor.dtype not in _DTYPE_NAMES:
            raise ExportError(f"cannot write {key!r}: safetensors has no {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        payload.append(tensor)
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as fh:
        fh.write(len(encoded).to_bytes(8, "little"))
        fh.write(encoded)
        for tensor in payload:
            if tensor.numel():
                fh.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return path


def write_json(data: object, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` as indented JSON with a final newline; return the path."""
    path = Path(path)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
