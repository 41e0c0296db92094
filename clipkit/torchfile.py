"""Reading ``torch.save`` files, zip and legacy, as data: what ``torch.load(weights_only=True)`` returns, within budget.

clipkit does not hand these files to ``torch.load``: its pickle reader trusts
numpy's ``__setstate__`` with raw bytes, maps compressed zip entries as if they
were stored, and allocates whatever sizes a file declares. Here the pickle is
bounded (``clipkit.pickle_scan``) and read by ``clipkit.unpickling``'s
restricted unpickler; zip storages are mapped or inflated within budget
(``clipkit.zipstore``); a legacy file's storages are read from the file after
their sizes have been checked against the bytes the file holds.
"""

from __future__ import annotations

import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from clipkit.errors import CheckpointError
from clipkit.limits import TensorBudget
from clipkit.pickle_scan import MAX_PICKLE_BYTES, scan_pickle
from clipkit.unpickling import SafeUnpickler, safe_unpickle
from clipkit.zipstore import ZipStorages, open_zip, read_entry

__all__ = ["read_legacy_file", "read_torch_zip", "zip_prefix"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_BYTEORDER_LIMIT = 16


def zip_prefix(zf: zipfile.ZipFile, path: Path) -> str:
    """The top folder of a torch zip: the one holding ``data.pkl``; ``CheckpointError`` if there is none or several."""
    prefixes = sorted({n.split("/", 1)[0] for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")})
    if len(prefixes) != 1:
        raise CheckpointError(
            f"{path} is a zip but not a torch checkpoint: expected one <name>/data.pkl entry, found "
            f"{len(prefixes)}; save it with torch.save"
        )
    return prefixes[0]


def check_byteorder(zf: zipfile.ZipFile, prefix: str, path: Path) -> None:
    """Refuse a zip whose ``byteorder`` entry is not this machine's (or is not a short byte-order word)."""
    name = f"{prefix}/byteorder"
    if name not in zf.namelist():
        return  # files older than the byteorder record are little-endian
    order = read_entry(zf, name, path, limit=_BYTEORDER_LIMIT).decode("ascii", "replace").strip()
    if order != sys.byteorder:
        raise CheckpointError(
            f"{path} stores its tensors {order[:16]!r}-endian and this machine is {sys.byteorder}-endian; "
            "convert it with torch on a matching machine"
        )


def read_torch_zip(path: Path) -> Any:
    """Unpickle the ``torch.save`` zip at ``path``: tensors as views of stored entries, or inflated within budget."""
    with open_zip(path) as zf:
        prefix = zip_prefix(zf, path)
        check_byteorder(zf, prefix, path)
        storages = ZipStorages(path, zf, prefix)
        data = read_entry(zf, f"{prefix}/data.pkl", path, limit=MAX_PICKLE_BYTES)
        return safe_unpickle(data, lambda f: SafeUnpickler(f, storages, what="data.pkl"), path=path, what="data.pkl")


class _LegacyStorages:
    """Storages of a legacy file: allocated when the pickle names them (charged first), filled from the file after."""

    def __init__(self, path: Path, data_bytes: int) -> None:
        self.path = path
        self.budget = TensorBudget(path, data_bytes)
        self.storages: dict[str, tuple[torch.dtype, int, torch.UntypedStorage]] = {}

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.UntypedStorage:
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.budget.charge_storage(key, numel * itemsize)
        untyped = torch.UntypedStorage(numel * itemsize)
        self.storages[key] = (dtype, numel, untyped)
        return untyped


def _small_pickle(fh: BinaryIO, path: Path, what: str) -> Any:
    start = fh.tell()
    scan_pickle(fh, what=f"{path}: {what}", file_size=path.stat().st_size)
    fh.seek(start)
    try:
        return _PlainUnpickler(fh).load()
    except Exception as exc:  # noqa: BLE001 - a damaged header can fail anywhere
        raise CheckpointError(f"{path}: its {what} could not be read ({exc}); the file is damaged") from exc


class _PlainUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """For the legacy header's numbers and dicts: no global at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} in a legacy header")


def read_legacy_file(path: Path) -> Any:
    """Unpickle a legacy (pre-1.6, non-zip) ``torch.save`` file: header pickles, the object, keys, then raw storages."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = _small_pickle(fh, path, "magic number")
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(
                f"{path} is a pickle but not a torch checkpoint (no torch magic number); save it with torch.save"
            )
        if _small_pickle(fh, path, "protocol version") != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path} is a legacy torch file of an unknown protocol version")
        info = _small_pickle(fh, path, "system info")
        if isinstance(info, dict) and info.get("little_endian") is False:
            raise CheckpointError(f"{path} was saved big-endian; convert it with torch on a matching machine")
        storages = _LegacyStorages(path, size - fh.tell())
        result = safe_unpickle(fh, lambda f: SafeUnpickler(f, storages, what="pickle"), path=path, what="pickle")
        keys = _small_pickle(fh, path, "storage list")
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages.storages):
            raise CheckpointError(f"{path}: its storage list does not match the storages its pickle uses; damaged file")
        for key in keys:
            _fill(fh, path, key, *storages.storages[key])
    return result


def _fill(fh: BinaryIO, path: Path, key: str, dtype: torch.dtype, numel: int, untyped: torch.UntypedStorage) -> None:
    """Read one legacy storage record (8-byte element count, then the bytes) into ``untyped``."""
    head = fh.read(8)
    if len(head) != 8 or struct.unpack("<q", head)[0] != numel:
        raise CheckpointError(
            f"{path}: storage {key} should hold {numel} items but its record says otherwise or is cut short; "
            "the file is truncated or damaged: fetch it again"
        )
    nbytes = untyped.nbytes()
    target = torch.empty((0,), dtype=torch.uint8).set_(untyped, 0, (nbytes,))
    view = memoryview(target.numpy()) if nbytes else memoryview(bytearray())
    got = fh.readinto(view) if nbytes else 0
    if got != nbytes:
        raise CheckpointError(f"{path}: storage {key} is cut short ({got} of {nbytes} bytes); fetch the file again")

