"""Reading checkpoint files into flat state dicts, safely.

Every pickle goes through clipkit's restricted unpickler (``clipkit.torchfile``
for ``torch.save`` files, ``clipkit.archive`` for TorchScript archives, read as
data without running their code): tensors, containers and plain numbers
only, including the numpy scalars and numeric arrays training scripts store
next to the weights. safetensors files are memory-mapped, copy-on-write, with
no copy of the data. Every file is read within a budget (``clipkit.limits``):
no tensor needs more bytes than the file holds, no header or index nests or
grows without bound, and side files stay inside the checkpoint's folder.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipkit.errors import CheckpointError, CheckpointNotFoundError
from clipkit.inputs import check_path_length, check_regular_file, check_source_argument
from clipkit import torchfile
from clipkit.limits import MAX_JSON_BYTES, check_shape, inside, parse_json, read_json
from clipkit.zipstore import LOCAL_HEADER

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

    Understands torch zip files (stored entries memory-mapped, compressed ones
    inflated within budget) and legacy pickles (both read by clipkit's
    restricted unpickler), TorchScript archives (read as data, no code run),
    safetensors (memory-mapped, zero copy), directories holding one checkpoint
    or safetensors shards, training wrappers (``state_dict``/``model`` keys) and
    DDP ``module.`` prefixes. Raises ``ConfigurationError`` for an empty path,
    ``CheckpointNotFoundError``, ``CheckpointError`` (empty, truncated, not a
    checkpoint, a FIFO/device/socket, over a limit of ``clipkit.limits``) or
    ``UnsafeCheckpointError`` (a pickle that asks for code).
    """
    check_source_argument(path)
    check_path_length(path)
    path = Path(path)
    if not os.path.lexists(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_directory(path)
    check_regular_file(path)
    return flatten_checkpoint(_read_file(path), source=str(path))


_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<total>\d+)\.safetensors$")
_PREFERRED_FILES = ("model.safetensors", "pytorch_model.bin")


def _read_directory(path: Path) -> dict[str, torch.Tensor]:
    """Read the one checkpoint a directory holds: its safetensors shards, or its single/preferred weights file."""
    from clipkit.folder import contained, listed_files

    listed = listed_files(path)
    files = [p for p in listed if p.suffix in _WEIGHT_SUFFIXES]
    shards = _shard_set(path, files)
    if shards:
        merged: dict[str, torch.Tensor] = {}
        for shard in shards:
            merged.update(read_state_dict(contained(path, shard, what="the shard set")))
        return merged
    from clipkit.layouts import choose_checkpoint

    choice = choose_checkpoint(p.name for p in listed)
    if choice is not None and choice.layout != "single file":  # a layout the repo's config names
        return read_state_dict(contained(path, path / choice.weights, what=f"the {choice.layout} layout"))
    for name in _PREFERRED_FILES:
        if (path / name).is_file():
            return read_state_dict(contained(path, path / name, what="the folder's preferred weights name"))
    if len(files) == 1:
        return read_state_dict(contained(path, files[0], what="the folder's only weights file"))
    listing = ", ".join(p.name for p in files) or "no weight files"
    raise CheckpointError(
        f"cannot tell which checkpoint to read in directory {path} (found: {listing}); "
        "pass the file's path instead"
    )


def _shard_set(path: Path, files: list[Path]) -> list[Path]:
    """The shards of one sharded safetensors checkpoint in ``path`` (from its index file or its file names), or []."""
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        index = read_json(indexes[0])
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{indexes[0]} is not a valid safetensors index: no weight_map of file names")
        names = sorted(set(weight_map.values()))
        shards = [inside(path, name, what=str(indexes[0])) for name in names]
        for shard in shards:
            check_path_length(shard, error=CheckpointError, what=f"{indexes[0]} names shard")
            check_regular_file(shard)  # a FIFO or device shard is not "missing": say what it is
        missing = [name for name, shard in zip(names, shards) if not shard.is_file()]
        if missing:
            raise CheckpointError(f"{path} is missing shards listed in {indexes[0].name}: {', '.join(missing)}")
        return shards
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
    if head.startswith(LOCAL_HEADER):
        if is_torchscript_archive(path):
            from clipkit import archive

            return archive.read_torchscript_state_dict(path)
        return torchfile.read_torch_zip(path)
    if _looks_like_safetensors(head, size):
        return read_safetensors(path)
    if head.startswith(_PICKLE_PROTO):
        return torchfile.read_legacy_file(path)
    raise CheckpointError(
        f"{path} is not a checkpoint clipkit can read: expected a torch file (zip or pickle), "
        f"a TorchScript archive or safetensors, but it starts with {head[:8]!r}"
    )


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
        if header_len > min(size - 8, MAX_JSON_BYTES):
            raise CheckpointError(
                f"{path} declares a safetensors header of {header_len} bytes, more than the file holds or "
                f"clipkit's limit of {MAX_JSON_BYTES}; the file is truncated, damaged or crafted"
            )
        header = parse_json(fh.read(header_len), what=f"{path}'s safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header: expected a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    tensors: dict[str, torch.Tensor] = {}
    entries = {key: _safetensors_entry(path, key, info) for key, info in header.items()}
    _check_disjoint(path, entries)
    for key, (dtype, shape, begin, end) in entries.items():
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


def _check_disjoint(path: Path, entries: Mapping[str, tuple[torch.dtype, list[int], int, int]]) -> None:
    """Refuse safetensors entries whose byte ranges overlap: each tensor owns its bytes, as the format requires."""
    last_end, last_key = 0, None
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin < last_end:
            raise CheckpointError(
                f"{path}: safetensors entries {last_key!r} and {key!r} share bytes; each tensor must own its "
                "bytes (a crafted file could otherwise make many tensors out of one)"
            )
        last_end, last_key = max(last_end, end), key


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
        raise CheckpointError(f"{path}: safetensors entry {key!r} has an invalid shape or offsets ({info!s:.200})")
    check_shape(path, repr(key), shape)
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
