"""Reading TorchScript archives as data: their weights, without running any of their code.

The official CLIP releases are TorchScript archives: a zip whose ``data.pkl``
pickles the module tree (``__torch__.*`` classes holding tensors), whose
``data/<key>`` entries hold the raw tensor bytes, and whose ``code/`` holds the
TorchScript source of every class. ``torch.jit.load`` compiles that source and
calls the classes' ``__setstate__``; this module does neither. A restricted
unpickler turns every ``__torch__`` class into an inert record of its state,
rebuilds tensors only through ``torch._utils``'s rebuild functions from storages
it maps straight out of the zip (zero copy when the entry is stored, as torch
stores them), and refuses every other global with ``UnsafeCheckpointError``.
Which attributes are parameters or buffers is read from the ``__parameters__``
and ``__buffers__`` lines of the class source, as text.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import re
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from clipkit.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError

__all__ = [
    "METADATA_KEYS",
    "TorchScriptArchive",
    "is_torchscript_archive",
    "read_torchscript_archive",
    "read_torchscript_state_dict",
    "split_metadata",
]

#: The entries the official archives add next to the weights: the model's resolution, context length and vocabulary.
METADATA_KEYS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

# What the TorchScript pickler writes for each storage type (torch/csrc/jit/serialization/pickler.cpp).
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}

_CLASS_LINE = re.compile(r"^class\s+([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?\s*:")
_LIST_LINE = re.compile(r"^\s+(__parameters__|__buffers__)\s*=\s*(\[.*\])\s*$")


# -- the public calls ----------------------------------------------------------------------------


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a TorchScript archive: a zip with ``<prefix>/constants.pkl`` or ``<prefix>/code/`` entries.

    ``torch.save`` zips of plain state dicts have neither, so they answer
    False, as do files that are not zips at all (or do not exist). A file that
    starts like a zip but whose directory is damaged raises
    ``zipfile.BadZipFile``, so the caller can say the download was cut short.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if head not in _ZIP_MAGIC:
        return False
    with zipfile.ZipFile(path) as zf:
        return _torchscript_prefix(zf.namelist()) is not None


def read_torchscript_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Return the parameters and buffers of the TorchScript archive at ``path``, as the module's ``state_dict()`` would.

    Keys are dotted module paths (``visual.transformer.resblocks.0.attn.in_proj_weight``),
    in the module's own order; values are CPU tensors in their stored dtype,
    memory-mapped from the file when its entries are stored uncompressed (as
    torch writes them). No code from the archive runs. The official archives'
    extra entries (``input_resolution``, ``context_length``, ``vocab_size``)
    are kept, as ``state_dict()`` keeps them; ``split_metadata`` separates them.
    Raises ``UnsafeCheckpointError`` if the archive's pickle asks for anything
    but module records, tensors and plain containers, and ``CheckpointError``
    if the file is not a readable TorchScript archive.
    """
    return read_torchscript_archive(path).state_dict


@attrs.frozen(kw_only=True)
class TorchScriptArchive:
    """What a TorchScript archive holds, read as data.

    ``state_dict``: parameters and buffers by dotted name. ``root_class``: the
    qualified TorchScript name of the top module (``__torch__.model.CLIP``).
    ``attributes``: the top module's plain (non-tensor, non-module) attributes,
    such as ``training``.
    """

    state_dict: dict[str, torch.Tensor]
    root_class: str
    attributes: dict[str, Any]


def read_torchscript_archive(path: str | os.PathLike[str]) -> TorchScriptArchive:
    """Read the TorchScript archive at ``path`` as data and return its ``TorchScriptArchive``.

    This is ``read_torchscript_state_dict`` plus the root class name and plain
    attributes; the same safety rules and errors apply.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(f"{path} does not exist; check the path") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable zip file ({exc}); a TorchScript archive is a zip: "
            "the download was probably cut short, fetch it again"
        ) from exc
    with zf:
        prefix = _torchscript_prefix(zf.namelist())
        if prefix is None:
            raise CheckpointError(
                f"{path} is not a TorchScript archive (no <name>/data.pkl with code/ or constants.pkl); "
                "read plain torch checkpoints with clipkit.checkpoint.read_state_dict"
            )
        _check_byteorder(zf, prefix, path)
        storages = _StorageReader(path, zf, prefix)
        root = _unpickle(zf, f"{prefix}/data.pkl", storages, path)
        declarations = _ClassDeclarations(zf, prefix)
        if not isinstance(root, _ScriptObject):
            raise CheckpointError(
                f"{path}: the archive's data.pkl does not hold a TorchScript module but a {type(root).__name__}; "
                "the file is damaged or not a model archive"
            )
        state = dict(_walk(root, "", declarations, path))
        attributes = (
            {k: v for k, v in root.state.items() if not isinstance(v, (torch.Tensor, _ScriptObject))}
            if isinstance(root.state, dict)
            else {}
        )
        return TorchScriptArchive(state_dict=state, root_class=root.qualified_name, attributes=attributes)


def split_metadata(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Split an archive's state dict into the weights and the metadata entries (``METADATA_KEYS``) as ints.

    Only 0-dim integer tensors under those names count as metadata; anything
    else under the same names stays with the weights, for the caller to judge.
    """
    weights: dict[str, torch.Tensor] = {}
    metadata: dict[str, int] = {}
    for key, value in state_dict.items():
        if key in METADATA_KEYS and value.dim() == 0 and not value.is_floating_point() and not value.is_complex():
            metadata[key] = int(value.item())
        else:
            weights[key] = value
    return weights, metadata


# -- the archive's layout ---------------------------------------------------------------------------


def _torchscript_prefix(names: list[str]) -> str | None:
    """The archive's top folder if it has ``data.pkl`` and TorchScript entries, else None."""
    prefixes = {name.split("/", 1)[0] for name in names if name.count("/") == 1 and name.endswith("/data.pkl")}
    for prefix in sorted(prefixes):
        if f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names):
            return prefix
    return None


def _check_byteorder(zf: zipfile.ZipFile, prefix: str, path: Path) -> None:
    name = f"{prefix}/byteorder"
    if name not in zf.namelist():
        return  # archives older than the byteorder record are little-endian
    order = zf.read(name).decode("ascii", "replace").strip()
    if order != sys.byteorder:
        raise CheckpointError(
            f"{path} stores its tensors {order}-endian and this machine is {sys.byteorder}-endian; "
            "load it with jit=True, or convert it with torch on a matching machine"
        )


class _StorageReader:
    """Turns ``('storage', type, key, location, numel)`` persistent ids into CPU storages over ``data/<key>``.

    Stored (uncompressed) entries at an offset aligned for their dtype are
    slices of one private memory map of the whole file: no copy, pages read on
    demand. Other entries (compressed by some zip tool) are read into memory.
    """

    def __init__(self, path: Path, zf: zipfile.ZipFile, prefix: str) -> None:
        self.path = path
        self.zf = zf
        self.prefix = prefix
        self._cache: dict[str, torch.UntypedStorage] = {}
        self._mapped: torch.UntypedStorage | None = None

    def _whole_file(self) -> torch.UntypedStorage:
        if self._mapped is None:
            size = self.path.stat().st_size
            # shared=False maps the file privately: writes to the tensors never reach the file
            self._mapped = torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size)
        return self._mapped

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            header = fh.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: the zip entry {info.filename} is damaged; fetch the file again")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.UntypedStorage:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        name = f"{self.prefix}/data/{key}"
        itemsize = torch.empty((), dtype=dtype).element_size()
        nbytes = numel * itemsize
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise CheckpointError(
                f"{self.path}: the archive refers to tensor data {name} that it does not contain; "
                "the file is incomplete or damaged: fetch it again"
            ) from None
        if info.file_size < nbytes:
            raise CheckpointError(
                f"{self.path}: tensor data {name} holds {info.file_size} bytes but {nbytes} are needed; "
                "the file is truncated or damaged: fetch it again"
            )
        start = self._data_offset(info) if info.compress_type == zipfile.ZIP_STORED and nbytes else -1
        if nbytes == 0:  # a non-resizable empty view: a crafted rebuild cannot grow it into stray memory
            storage = self._whole_file()[0:0]
        elif start >= 0 and start % itemsize == 0:
            storage = self._whole_file()[start : start + nbytes]
        else:
            data = bytearray(self.zf.read(name)[:nbytes])
            storage = torch.frombuffer(data, dtype=torch.uint8).untyped_storage()
        self._cache[key] = storage
        return storage


# -- the restricted unpickler --------------------------------------------------------------------------


class _ScriptObject:
    """The inert stand-in for a ``__torch__`` class: it only records the state the pickle gives it."""

    qualified_name: str = "__torch__"
    state: Any = None  # NEWOBJ does not call __init__; BUILD sets the state

    def __init__(self) -> None:  # a REDUCE with arguments is refused by this signature
        self.state = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name} record>"


class _Refused:
    """What a refused global becomes while the pickle is scanned to its end: inert, collecting nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _StorageType:
    """What ``torch.<Type>Storage`` becomes: just the dtype it names."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    # arguments from the file are checked, then handed to torch's own rebuild function
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("a tensor was rebuilt from something that is not a storage of this archive")
    if not all(isinstance(v, int) for v in (storage_offset, *size, *stride)):
        raise pickle.UnpicklingError("a tensor's offset, size or stride is not made of integers")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False, OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *state: Any) -> Any:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter was rebuilt from something that is not a tensor")
    return data


def _same(value: Any, *_: Any) -> Any:
    return value


def _as_list(value: Any, *_: Any) -> list[Any]:
    return list(value)


def _make_device(spec: Any, *_: Any) -> torch.device:
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"torch.device needs a string, the archive gave {type(spec).__name__}")
    return torch.device(spec)


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "device"): _make_device,
    ("builtins", "complex"): complex,
    # the TorchScript pickler tags typed lists and containers with these
    ("torch.jit._pickle", "build_intlist"): _as_list,
    ("torch.jit._pickle", "build_floatlist"): _as_list,
    ("torch.jit._pickle", "build_doublelist"): _as_list,
    ("torch.jit._pickle", "build_boollist"): _as_list,
    ("torch.jit._pickle", "build_tensorlist"): _as_list,
    ("torch.jit._pickle", "restore_type_tag"): _same,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``: ``__torch__`` classes become records, tensors come from the archive's storages."""

    def __init__(self, file: io.BytesIO, storages: _StorageReader) -> None:
        super().__init__(file)
        self.storages = storages
        self.refused: list[str] = []
        self._records: dict[str, type[_ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            record = self._records.get(qualified)
            if record is None:
                record = type("ScriptRecord", (_ScriptObject,), {"qualified_name": qualified})
                self._records[qualified] = record
            return record
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        self.refused.append(f"{module}.{name}")
        return type("Refused", (_Refused,), {})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        if "/" in key or key in ("", ".", "..") or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage key {key!r:.40}")
        untyped = self.storages.storage(key, storage_type.dtype, numel)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=storage_type.dtype, _internal=True)


def _unpickle(zf: zipfile.ZipFile, name: str, storages: _StorageReader, path: Path) -> Any:
    unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(name)), storages)
    failure: Exception | None = None
    try:
        result = unpickler.load()
    except Exception as exc:  # noqa: BLE001 - judged below, after the refusals
        failure = exc
        result = None
    if unpickler.refused:
        refused = sorted(set(unpickler.refused))
        raise UnsafeCheckpointError(
            f"{path}: the archive's {name.split('/', 1)[-1]} asks for {', '.join(refused)}, which a model's "
            "weights never need; clipkit refused to run it. Do not load this file unless you trust it and "
            "know why it does that",
            globals=refused,
        )
    if isinstance(failure, CheckpointError):
        raise failure
    if failure is not None:
        raise CheckpointError(
            f"{path}: the archive's weights could not be read as data ({type(failure).__name__}: {failure}); "
            "the file is damaged or was written by an unusual exporter. Fetch it again; if you trust it, "
            "jit=True lets TorchScript itself load it"
        ) from failure
    return result


# -- parameters and buffers from the class source ------------------------------------------------------------


class _ClassDeclarations:
    """``__parameters__``/``__buffers__`` of each class, read from ``code/`` as text (never executed)."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str) -> None:
        self.zf = zf
        self.prefix = prefix
        self.names = set(zf.namelist())
        self._files: dict[str, dict[str, tuple[bool, tuple[str, ...], tuple[str, ...]]]] = {}

    def lookup(self, qualified_name: str) -> tuple[bool, tuple[str, ...], tuple[str, ...]] | None:
        """``(is_module, parameters, buffers)`` for the class, or None when its source is not in the archive."""
        module, _, cls = qualified_name.rpartition(".")
        source = f"{self.prefix}/code/{module.replace('.', '/')}.py"
        classes = self._files.get(source)
        if classes is None:
            classes = self._parse(source) if source in self.names else {}
            self._files[source] = classes
        return classes.get(cls)

    def _parse(self, source: str) -> dict[str, tuple[bool, tuple[str, ...], tuple[str, ...]]]:
        classes: dict[str, tuple[bool, tuple[str, ...], tuple[str, ...]]] = {}
        current: str | None = None
        for line in self.zf.read(source).decode("utf-8", "replace").splitlines():
            head = _CLASS_LINE.match(line)
            if head:
                current = head.group(1)
                classes[current] = ((head.group(2) or "").strip() == "Module", (), ())
            elif line[:1].strip():  # any other top-level line ends the class body
                current = None
            elif current is not None and (found := _LIST_LINE.match(line)):
                try:
                    names = ast.literal_eval(found.group(2))
                except (ValueError, SyntaxError):
                    continue
                names = tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()
                is_module, parameters, buffers = classes[current]
                if found.group(1) == "__parameters__":
                    classes[current] = (is_module, names, buffers)
                else:
                    classes[current] = (is_module, parameters, names)
        return classes


_MAX_DEPTH = 64  # real module trees are a handful of levels deep


def _walk(
    obj: _ScriptObject,
    prefix: str,
    declarations: _ClassDeclarations,
    path: Path,
    _seen: frozenset[int] = frozenset(),
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(dotted name, tensor)`` for ``obj``'s parameters, buffers, then children, in ``state_dict()`` order.

    A module that contains itself, or a tree deeper than any real model, is a
    ``CheckpointError`` (a crafted file), not a recursion crash.
    """
    if id(obj) in _seen or len(_seen) >= _MAX_DEPTH:
        raise CheckpointError(
            f"{path}: module {prefix.rstrip('.') or '<root>'} contains itself or nests deeper than "
            f"{_MAX_DEPTH} levels; the archive is damaged or crafted"
        )
    _seen = _seen | {id(obj)}
    declared = declarations.lookup(obj.qualified_name)
    state = obj.state
    if not isinstance(state, dict):
        if declared is not None and (declared[1] or declared[2]):
            raise CheckpointError(
                f"{path}: module {prefix.rstrip('.') or '<root>'} ({obj.qualified_name}) stores its state through "
                "a custom __getstate__, so its weights cannot be read without running its code; "
                "load it with jit=True only if you trust the file"
            )
        return
    if declared is not None:
        _, parameters, buffers = declared
        for name in (*parameters, *buffers):
            value = state.get(name)
            if isinstance(value, torch.Tensor):
                yield prefix + name, value
    else:  # no source for the class: every tensor attribute is taken as state
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                yield prefix + name, value
    for name, value in state.items():
        if isinstance(value, _ScriptObject) and _is_module(value, declarations):
            yield from _walk(value, f"{prefix}{name}.", declarations, path, _seen)


def _is_module(obj: _ScriptObject, declarations: _ClassDeclarations) -> bool:
    declared = declarations.lookup(obj.qualified_name)
    if declared is not None:
        return declared[0]
    return isinstance(obj.state, dict) and "training" in obj.state
