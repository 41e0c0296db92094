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


def _refuse_existing(targets: list[Path], overwrite: bool, *, folder: bool) -> None:
    """``ExportError`` for a target that exists (a folder: one holding anything) unless ``overwrite``."""
    for target in targets:
        if folder and target.is_dir() and not target.is_symlink():
            if overwrite or not any(target.iterdir()):
                continue
            raise ExportError(f"{target} is a folder that already holds files; pass overwrite=True (--force) to replace it")
        if not folder and target.is_dir():
            raise ExportError(f"{target} is a folder; name the file to write")
        if os.path.lexists(target) and not overwrite:
            raise ExportError(f"{target} already exists; pass overwrite=True (--force) to replace it")


def _make_parent(parent: Path) -> Path | None:
    """Create ``parent`` (and its missing ancestors); return the topmost folder created, or ``None``."""
    missing = next((p for p in reversed((parent, *parent.parents)) if not p.exists()), None)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the folder {parent} to export into ({exc.strerror or exc})") from exc
    return missing


def _swap(new: Path, target: Path) -> None:
    """Move ``new`` to ``target`` by renames; an existing folder is moved aside first and restored if that fails."""
    real_dir = target.is_dir() and not target.is_symlink()
    if not os.path.lexists(target) or (new.is_dir() and real_dir and not any(target.iterdir())) or (
        not new.is_dir() and not real_dir
    ):
        os.replace(new, target)  # one atomic rename: onto nothing, a file onto a file, a folder onto an empty one
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old = aside / target.name
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged(
    out: str | os.PathLike[str], names: tuple[str, ...] | None = None, *, overwrite: bool = False
) -> Iterator[Path]:
    """A fresh folder to write an export into, moved into place only if the block succeeds.

    With ``names``, ``out`` is a file path and the block writes those file
    names (``out``'s and its side files), each replacing ``out.parent/name``
    by one rename; without, ``out`` is a folder and the block's folder
    becomes it as a whole. An existing target (a folder: a non-empty one) is
    refused with ``ExportError`` unless ``overwrite``; when replaced, the old
    one stays intact until the new one is complete. Any OS error is an
    ``ExportError`` naming the path, and on any failure nothing new is left
    (the staging folder and the folders created for it are removed).
    """
    out = Path(out)
    targets = [out.parent / name for name in names] if names is not None else [out]
    _refuse_existing(targets, overwrite, folder=names is None)
    created = _make_parent(out.parent)
    stage: Path | None = None
    try:
        try:
            stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.clipkit-export-", dir=out.parent))
            work = stage / "out"
            work.mkdir()  # made as the caller's umask says, unlike mkdtemp's private folder
        except OSError as exc:
            raise ExportError(f"cannot write into {out.parent} ({exc.strerror or exc})") from exc
        try:
            yield work
            if names is None:
                _swap(work, out)
            else:
                for name in names:
                    _swap(work / name, out.parent / name)
        except OSError as exc:
            raise ExportError(f"cannot write {out} ({exc.strerror or exc})") from exc
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        if stage is not None:
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
