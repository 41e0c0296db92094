"""Crafted checkpoint files, built in code: each one a way a stranger's file could attack a loader.

Every builder writes into a folder it is given and returns the path to load.
They start from real files (``torch.save`` zips, legacy pickles, a scripted
TorchScript archive, safetensors) and change only what the attack needs.

- ``numpy_object_pointer(root)``: a training checkpoint whose extra entry is a
  numpy array of a void dtype holding an object field, with raw bytes as its data
- ``deflate_bomb_archive(root, entry)``: a TorchScript archive whose ``entry``
  (``"byteorder"``, ``"data.pkl"`` or ``"data/0"``) is a deflated run of zeros
- ``stride0_checkpoint(root, rows)``: ``token_embedding.weight`` an ``expand()`` to ``rows`` rows
- ``nested_tuple(root, fmt, depth)``: a pickle holding a tuple nested ``depth`` deep, as a torch zip,
  a legacy file or a TorchScript archive (``fmt``)
- ``deflated_torch_zip(root, which)``: a ``torch.save`` zip with ``data/0`` (or every entry) deflated
- ``nested_safetensors(root, depth)``, ``nested_index(root, depth)``, ``escaping_index(root, name)``
- ``legacy_long_length(root)``: a legacy pickle whose first string claims 4 GB
- ``fifo(root)``, ``socket_file(root)``
"""

from __future__ import annotations

import io
import json
import pickle
import socket
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

import factories

CONFIG = factories.TINY_VIT


def state_dict() -> dict[str, torch.Tensor]:
    """The tiny ViT's random state dict (fp16 where the releases halve), the same on every call."""
    return factories.make_state_dict(CONFIG)


class _ObjectPointerArray:
    """Pickles as a numpy array whose void dtype holds an object field: its 8 data bytes would be a pointer."""

    def __reduce__(self):
        core = getattr(np, "_core", None) or np.core
        void = np.dtype([("f0", "O")])
        return (core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), void, False, b"\x41" * 8))


def numpy_object_pointer(root: Path) -> Path:
    """A training checkpoint (``state_dict`` + extras) whose ``extra`` is the pointer-making numpy array."""
    path = root / "numpy-object.pt"
    torch.save({"state_dict": state_dict(), "epoch": np.int64(3), "extra": _ObjectPointerArray()}, path)
    return path


def _scripted_archive(path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated
        torch.jit.save(torch.jit.script(torch.nn.Linear(4, 4)), str(path))
    return path


def _rewrite_zip(source: Path, destination: Path, replace: dict[str, bytes | None],
                 compress: frozenset[str] | set[str] = frozenset()) -> Path:
    """Copy a zip, replacing entries (named by their path inside the top folder) and deflating some (``*``: all)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(destination, "w") as zout:
        for info in zin.infolist():
            inner = info.filename.split("/", 1)[1]
            data = replace.get(inner, zin.read(info))
            if data is None:
                continue
            method = zipfile.ZIP_DEFLATED if (inner in compress or "*" in compress) else zipfile.ZIP_STORED
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time), data, compress_type=method,
                          compresslevel=1)
    return destination


def _bomb_zip(source: Path, destination: Path, entry: str, size: int) -> Path:
    """Copy ``source`` with ``entry`` replaced by ``size`` deflated zero bytes, streamed (never held in memory)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(destination, "w") as zout:
        for info in zin.infolist():
            inner = info.filename.split("/", 1)[1]
            if inner != entry:
                zout.writestr(info, zin.read(info))
                continue
            bomb = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            bomb.compress_type = zipfile.ZIP_DEFLATED
            bomb._compresslevel = 1  # noqa: SLF001 - zipfile's own field for the level
            zeros = bytes(1 << 20)
            with zout.open(bomb, "w", force_zip64=True) as fh:
                for _ in range(size >> 20):
                    fh.write(zeros)
    return destination


def deflate_bomb_archive(root: Path, entry: str, size: int = 256 << 20) -> Path:
    """A scripted TorchScript archive whose ``entry`` inflates to ``size`` zero bytes."""
    base = _scripted_archive(root / "scripted.pt")
    return _bomb_zip(base, root / f"bomb-{entry.replace('/', '-')}.pt", entry, size)


def stride0_checkpoint(root: Path, rows: int = 4_000_000) -> Path:
    """A tiny ViT checkpoint whose ``token_embedding.weight`` is one row ``expand()``-ed to ``rows`` rows."""
    weights = state_dict()
    width = weights["token_embedding.weight"].shape[1]
    weights["token_embedding.weight"] = torch.randn(1, width).expand(rows, width)
    path = root / "stride0.pt"
    torch.save(weights, path)
    return path


def nested_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of a tuple nested ``depth`` deep (one byte a level)."""
    return b"\x80\x02)" + b"\x85" * depth + b"."


def nested_tuple(root: Path, fmt: str, depth: int = 1_000_000) -> Path:
    """The deeply nested tuple as a torch zip's ``data.pkl``, a legacy file's object, or an archive's ``data.pkl``."""
    path = root / f"nested-{fmt}.pt"
    if fmt == "zip":
        base = root / "plain.pt"
        torch.save({"w": torch.ones(2)}, base)
        return _rewrite_zip(base, path, {"data.pkl": nested_pickle(depth)})
    if fmt == "legacy":
        header = b"".join(pickle.dumps(v, protocol=2) for v in (
            0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}))
        path.write_bytes(header + nested_pickle(depth) + pickle.dumps([], protocol=2))
        return path
    if fmt == "torchscript":
        base = _scripted_archive(root / "scripted-nested.pt")
        return _rewrite_zip(base, path, {"data.pkl": nested_pickle(depth)})
    raise ValueError(fmt)


def legacy_long_length(root: Path) -> Path:
    """A legacy file whose object pickle starts with a string claiming 4 GB (the file holds a few bytes)."""
    header = b"".join(pickle.dumps(v, protocol=2) for v in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    path = root / "long-length.pt"
    path.write_bytes(header + b"\x80\x02X" + struct.pack("<I", 0xFFFFFFFF) + b"abc")
    return path


def deflated_torch_zip(root: Path, which: str) -> Path:
    """``torch.save`` of the tiny ViT with ``data/0`` (``which="data0"``) or every entry (``"all"``) deflated."""
    base = root / "stored.pt"
    torch.save(state_dict(), base)
    compress = {"data/0"} if which == "data0" else {"*"}
    return _rewrite_zip(base, root / f"deflated-{which}.pt", {}, compress=compress)


def _safetensors_bytes(header_text: str, data: bytes = b"") -> bytes:
    raw = header_text.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def nested_safetensors(root: Path, depth: int = 100_000) -> Path:
    """A safetensors file whose header's metadata nests ``depth`` lists deep."""
    path = root / "nested.safetensors"
    path.write_bytes(_safetensors_bytes('{"__metadata__": {"x": ' + "[" * depth + "]" * depth + "}}"))
    return path


def _sharded(root: Path, index: dict | str) -> Path:
    """A folder with two safetensors shards of the tiny ViT and ``index`` as its index file."""
    from safetensors.torch import save_file

    folder = root / "sharded"
    folder.mkdir(parents=True, exist_ok=True)
    weights = state_dict()
    keys = list(weights)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: weights[k].contiguous() for k in part}, str(folder / name))
    text = index if isinstance(index, str) else json.dumps(index)
    (folder / "model.safetensors.index.json").write_text(text)
    return folder


def nested_index(root: Path, depth: int = 100_000) -> Path:
    """A sharded folder whose ``model.safetensors.index.json`` nests ``depth`` lists deep."""
    return _sharded(root, '{"metadata": ' + "[" * depth + "]" * depth + ', "weight_map": {}}')


def escaping_index(root: Path, name: str) -> Path:
    """A sharded folder whose index maps one key to ``name`` (``../x``, an absolute path)."""
    weights = state_dict()
    weight_map = {key: "model-00001-of-00002.safetensors" for key in weights}
    weight_map[next(iter(weights))] = name
    return _sharded(root, {"metadata": {}, "weight_map": weight_map})


def fifo(root: Path) -> Path:
    """A named pipe (opening it to read would block until a writer comes)."""
    import os

    path = root / "pipe.pt"
    os.mkfifo(path)
    return path


def socket_file(root: Path) -> tuple[Path, socket.socket]:
    """A bound Unix socket file; the caller closes the socket."""
    path = root / "sock.pt"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return path, sock


def legacy_bytes(obj: object) -> bytes:
    """``torch.save(obj)`` in the legacy (non-zip) format, as bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()
