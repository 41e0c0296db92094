"""Reading checkpoint files into flat state dicts, safely.

Every pickle goes through ``torch.load(..., weights_only=True)``; the only extra
types allowed are numpy scalars, dtypes and plain arrays, which training
scripts store next to the weights (epoch counters, metrics). TorchScript
archives are read as data by ``clipkit.archive`` without running their code.
safetensors files are memory-mapped, copy-on-write, with no copy of the data.
"""

from __future__ import annotations

import json
import math
import os
import re
import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipkit.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _numpy_safe_globals() -> list[Any]:
    """numpy scalars, dtypes and plain arrays, under both their numpy 2 and numpy 1 module names."""
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):
        obj = getattr(core.multiarray, name)
        allowed += [obj, (obj, f"numpy.core.multiarray.{name}"), (obj, f"numpy._core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [
            cls
            for cls in vars(dtypes).values()
            if isinstance(cls, type) and issubclass(cls, np.dtype) and cls.__name__ != "ObjectDType"
        ]
    return allowed


_NUMPY_SAFE = _numpy_safe_globals()


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a TorchScript archive (a zip holding ``constants.pkl`` or ``code/``).

    Raises ``CheckpointError`` for a damaged zip file.
    """
    from clipkit import archive

    try:
        return archive.is_torchscript_archive(path)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(
            f"{path} is a damaged zip file ({exc}); the download or save was probably cut short: fetch it again"
        ) from exc


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the checkpoint at ``path`` (a file or a directory) into a flat ``{key: tensor}`` dict on the CPU.

    Understands torch zip files (memory-mapped) and legacy pickles (both with
    ``weights_only=True``), TorchScript archives (read as data, no code run),
    safetensors (memory-mapped, zero copy), directories holding one checkpoint
    or safetensors shards, training wrappers (``state_dict``/``model`` keys) and
    DDP ``module.`` prefixes. Raises ``CheckpointNotFoundError``,
    ``CheckpointError`` (empty, truncated, not a checkpoint) or
    ``UnsafeCheckpointError`` (a pickle that asks for code).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_directory(path)
    return flatten_checkpoint(_read_file(path), source=str(path))


_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<total>\d+)\.safetensors$")
_PREFERRED_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_directory(path: Path) -> dict[str, torch.Tensor]:
    """Read the one checkpoint a directory holds: its safetensors shards, or its single/preferred weights file."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    shards = _shard_set(path, files)
    if shards:
        merged: dict[str, torch.Tensor] = {}
        for shard in shards:
            merged.update(read_state_dict(shard))
        return merged
    for name in _PREFERRED_FILES:
        if (path / name).is_file():
            return read_state_dict(path / name)
    if len(files) == 1:
        return read_state_dict(files[0])
    listing = ", ".join(p.name for p in files) or "no weight files"
    raise CheckpointError(
        f"cannot tell which checkpoint to read in directory {path} (found: {listing}); "
        "pass the file's path instead"
    )


def _shard_set(path: Path, files: list[Path]) -> list[Path]:
    """The shards of one sharded safetensors checkpoint in ``path`` (from its index file or its file names), or []."""
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{indexes[0]} is not a valid safetensors index: {exc}") from exc
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise CheckpointError(f"{path} is missing shards listed in {indexes[0].name}: {', '.join(missing)}")
        return [path / name for name in names]
    groups: dict[tuple[str, str], list[Path]] = {}
    for file in files:
        match = _SHARD.match(file.name)
        if match:
            groups.setdefault((match["stem"], match["total"]), []).append(file)
    complete = [group for (stem, total), group in groups.items() if len(group) == int(total)]
    if len(complete) == 1:
        return complete[0]
    return []


def _read_file(path: Path) -> Any:
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or save did not finish; fetch it again")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(_ZIP_MAGIC):
        if is_torchscript_archive(path):
            from clipkit import archive

            return archive.read_torchscript_state_dict(path)
        return _torch_load(path, mmap=True)
    if _looks_like_safetensors(head, size):
        return read_safetensors(path)
    if head.startswith(_PICKLE_PROTO):
        return _torch_load(path, mmap=False)
    raise CheckpointError(
        f"{path} is not a checkpoint clipkit can read: expected a torch file (zip or pickle), "
        f"a TorchScript archive or safetensors, but it starts with {head[:8]!r}"
    )


def _torch_load(path: Path, *, mmap: bool) -> Any:
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy-alias notices from safe_globals
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        if unsafe or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            listed = ", ".join(unsafe) if unsafe else str(exc).splitlines()[0]
            raise UnsafeCheckpointError(
                f"{path} asks to unpickle code clipkit will not run ({listed}). clipkit only reads tensors, "
                "containers and numpy scalars. If you trust the file, re-save just its weights: "
                "torch.save(obj['state_dict'], 'weights.pt') in a session where you accept that risk.",
                globals=unsafe,
            ) from exc
        raise CheckpointError(f"{path} could not be read as a torch checkpoint: {exc}") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} could not be read as a torch checkpoint ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt: fetch or save it again"
        ) from exc


def _unsafe_globals(path: Path) -> list[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # torch's scanner reads zip files only
        found = _legacy_pickle_globals(path)
    allowed = {
        name if isinstance(name, str) else f"{name.__module__}.{name.__qualname__}"
        for obj in _NUMPY_SAFE
        for name in ([obj[1]] if isinstance(obj, tuple) else [obj])
    }
    return sorted(set(found) - allowed)


def _legacy_pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals that a legacy (non-zip) torch file's pickles reference, found without unpickling."""
    import pickletools

    safe = {"torch._utils", "collections", "torch"}
    found: set[str] = set()
    strings: list[str] = []
    with open(path, "rb") as fh:
        while True:
            try:
                for opcode, arg, _ in pickletools.genops(fh):
                    if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                        strings.append(str(arg))
                    elif opcode.name == "GLOBAL":
                        found.add(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.add(f"{strings[-2]}.{strings[-1]}")
            except Exception:  # the raw storage bytes after the pickles are not opcodes
                break
    return sorted(g for g in found if g.rsplit(".", 1)[0] not in safe)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Memory-map a safetensors file and return its tensors as views of the mapping (copy-on-write, no copy).

    Raises ``CheckpointError`` for a malformed header or offsets past the end of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is too short to be a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} has a corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header: expected a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    tensors: dict[str, torch.Tensor] = {}
    for key, info in header.items():
        dtype, shape, begin, end = _safetensors_entry(path, key, info)
        itemsize = torch.empty((), dtype=dtype).element_size()
        numel = math.prod(shape)
        offset = data_start + begin
        if end - begin != numel * itemsize or data_start + end > size:
            raise CheckpointError(
                f"{path}: safetensors entry {key!r} does not fit the file (truncated download?); fetch it again"
            )
        if offset % itemsize == 0:
            tensor = torch.empty(0, dtype=dtype).set_(storage, offset // itemsize, shape)
        else:  # unaligned entry: one small copy
            tensor = torch.empty(0, dtype=torch.uint8).set_(storage, offset, [end - begin]).clone().view(dtype).reshape(shape)
        tensors[key] = tensor
    return tensors


def _safetensors_entry(path: Path, key: str, info: Any) -> tuple[torch.dtype, list[int], int, int]:
    """Validate one safetensors header entry: a known dtype, non-negative int dims, ``0 <= begin <= end``."""
    try:
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        shape = list(info["shape"])
        begin, end = info["data_offsets"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: safetensors entry {key!r} is malformed or has an unsupported dtype") from exc
    numbers = [*shape, begin, end]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers) or begin > end:
        raise CheckpointError(f"{path}: safetensors entry {key!r} has an invalid shape or offsets ({info})")
    return dtype, shape, begin, end


def flatten_checkpoint(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint object and return it flat.

    Unwraps training wrappers (``{"state_dict": ...}``, ``{"model": ...}``),
    strips a ``module.`` prefix that every key shares (DDP), and keeps only
    tensor values (epoch counters and metrics are dropped). Raises
    ``CheckpointError`` if no tensors are found.
    """
    for _ in range(4):  # wrappers nest at most a few levels
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{source} contains no tensors (top-level keys: {keys or 'none'})")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors
