"""Tensor storages and small entries out of a torch zip (``torch.save`` files and TorchScript archives), within budget.

A stored (uncompressed) ``data/<key>`` entry, as torch writes it, is a slice of
one private memory map of the whole file: no copy, pages read on demand. A
compressed entry is never mapped (its bytes on disk are not the tensor's): it
is inflated into memory, after its declared size has been checked against
``clipkit.limits.inflate_cap`` and the file's ``TensorBudget``, and the
inflation itself is stopped at that size, so a zip bomb costs nothing. Every
problem is a ``CheckpointError`` naming the file and the entry.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import torch

from clipkit.errors import CheckpointError
from clipkit.limits import TensorBudget, inflate_cap

__all__ = ["LOCAL_HEADER", "ZIP_MAGIC", "ZipStorages", "open_zip", "read_entry"]

#: The signature of a zip entry's local header: how every torch zip file (``torch.save``, TorchScript) starts.
LOCAL_HEADER = b"PK\x03\x04"
#: How any zip file starts: a first entry's local header, or the end-of-directory record of an empty zip.
ZIP_MAGIC: tuple[bytes, ...] = (LOCAL_HEADER, b"PK\x05\x06")

_CHUNK = 1 << 20


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open ``path`` as a zip, or raise ``CheckpointError`` saying the file is damaged or cut short."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(
            f"{path} is a damaged zip file ({exc}); the download or save was probably cut short: fetch it again"
        ) from exc


def read_entry(zf: zipfile.ZipFile, name: str, path: Path, *, limit: int) -> bytes:
    """The bytes of entry ``name``, refused when declared or inflated beyond ``limit`` or the inflation cap."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{path} has no {name} entry; the file is incomplete or damaged") from None
    file_size = path.stat().st_size
    cap = min(limit, inflate_cap(info.compress_size, file_size) if info.compress_type else file_size)
    if info.file_size > cap:
        raise CheckpointError(
            f"{path}: the zip entry {name} declares {info.file_size} bytes, over the limit of {cap} for it; "
            "the file is damaged or a zip bomb"
        )
    buffer = bytearray(info.file_size)
    _inflate_into(zf, info, buffer, path)
    return bytes(buffer)


def _inflate_into(zf: zipfile.ZipFile, info: zipfile.ZipInfo, buffer: bytearray, path: Path) -> None:
    """Fill ``buffer`` from entry ``info``, read to its end (so its CRC is checked) and never past its size."""
    view = memoryview(buffer)
    filled = 0
    total = 0
    try:
        with zf.open(info) as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > info.file_size:
                    raise CheckpointError(f"{path}: the zip entry {info.filename} inflates past its declared size")
                take = min(len(chunk), len(buffer) - filled)
                view[filled : filled + take] = chunk[:take]
                filled += take
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: the zip entry {info.filename} could not be read ({type(exc).__name__}: {exc}); "
            "the file is damaged or truncated: fetch it again"
        ) from exc
    if filled < len(buffer):
        raise CheckpointError(f"{path}: the zip entry {info.filename} holds fewer bytes than it declares")


class ZipStorages:
    """Storages for ``('storage', type, key, location, numel)`` ids, read from ``<prefix>/data/<key>``."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, prefix: str) -> None:
        self.path = path
        self.zf = zf
        self.prefix = prefix
        self.file_size = path.stat().st_size
        self.budget = TensorBudget(path, self.file_size)
        self._mapped: torch.UntypedStorage | None = None

    def _whole_file(self) -> torch.UntypedStorage:
        if self._mapped is None:
            # shared=False maps the file privately: writes to the tensors never reach the file
            self._mapped = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=self.file_size)
        return self._mapped

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            header = fh.read(30)
        if len(header) != 30 or header[:4] != LOCAL_HEADER:
            raise CheckpointError(f"{self.path}: the zip entry {info.filename} is damaged; fetch the file again")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.UntypedStorage:
        """The bytes of storage ``key`` (``numel`` items of ``dtype``), mapped or inflated, charged to the budget."""
        name = f"{self.prefix}/data/{key}"
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise CheckpointError(
                f"{self.path}: the file refers to tensor data {name} that it does not contain; "
                "the file is incomplete or damaged: fetch it again"
            ) from None
        if info.file_size < nbytes:
            raise CheckpointError(
                f"{self.path}: tensor data {name} holds {info.file_size} bytes but {nbytes} are needed; "
                "the file is truncated or damaged: fetch it again"
            )
        if info.compress_type != zipfile.ZIP_STORED:
            return self._inflated(info, nbytes)
        self.budget.charge_storage(key, nbytes)
        if nbytes == 0:  # a non-resizable empty view: a crafted rebuild cannot grow it into stray memory
            return self._whole_file()[0:0]
        start = self._data_offset(info)
        if start + nbytes > self.file_size:
            raise CheckpointError(f"{self.path}: tensor data {name} runs past the end of the file; fetch it again")
        if start % torch.empty((), dtype=dtype).element_size() == 0:
            return self._whole_file()[start : start + nbytes]
        with open(self.path, "rb") as fh:  # unaligned: one copy
            fh.seek(start)
            return _owned(bytearray(fh.read(nbytes)))

    def _inflated(self, info: zipfile.ZipInfo, nbytes: int) -> torch.UntypedStorage:
        cap = inflate_cap(info.compress_size, self.file_size)
        if info.file_size > cap:
            raise CheckpointError(
                f"{self.path}: the compressed entry {info.filename} declares {info.file_size} bytes from "
                f"{info.compress_size}, over clipkit's cap of {cap}; the file is a zip bomb or damaged"
            )
        self.budget.charge_inflation(info.filename, info.file_size)
        self.budget.charge_storage(info.filename, nbytes)
        buffer = bytearray(nbytes)
        _inflate_into(self.zf, info, buffer, self.path)
        return _owned(buffer)


def _owned(buffer: bytearray) -> torch.UntypedStorage:
    if not buffer:
        return torch.UntypedStorage(0)
    return torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()
