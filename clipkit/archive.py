"""Reading TorchScript archives as data: their weights, without running any of their code.

The official CLIP releases are TorchScript archives: a zip whose ``data.pkl``
pickles the module tree (``__torch__.*`` classes holding tensors), whose
``data/<key>`` entries hold the raw tensor bytes, and whose ``code/`` holds the
TorchScript source of every class. ``torch.jit.load`` compiles that source and
calls the classes' ``__setstate__``; this module does neither. clipkit's
restricted unpickler (``clipkit.unpickling``, the same rules as for torch
files, within the file's budget) turns every ``__torch__`` class into an inert
record of its state, rebuilds tensors from storages mapped straight out of the
zip (zero copy when the entry is stored, as torch stores them; inflated within
budget otherwise), and refuses every other global with ``UnsafeCheckpointError``.
Which attributes are parameters or buffers is read from the ``__parameters__``
and ``__buffers__`` lines of the class source, as text.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import torch

from clipkit.errors import CheckpointError, CheckpointNotFoundError
from clipkit.limits import MAX_JSON_BYTES, TensorBudget, inflate_cap
from clipkit.pickle_scan import MAX_PICKLE_BYTES, scan_pickle
from clipkit.torchfile import check_byteorder
from clipkit.unpickling import Refused, SafeUnpickler, safe_unpickle
from clipkit.zipstore import ZIP_MAGIC, ZipStorages, open_zip, read_entry

__all__ = [
    "METADATA_KEYS",
    "TorchScriptArchive",
    "is_torchscript_archive",
    "preflight",
    "read_torchscript_archive",
    "read_torchscript_state_dict",
    "split_metadata",
]

#: The entries the official archives add next to the weights: the model's resolution, context length and vocabulary.
METADATA_KEYS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")

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
    if head not in ZIP_MAGIC:
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
    if not path.exists():
        raise CheckpointNotFoundError(f"{path} does not exist; check the path")
    with open_zip(path) as zf:
        prefix = _torchscript_prefix(zf.namelist())
        if prefix is None:
            raise CheckpointError(
                f"{path} is not a TorchScript archive (no <name>/data.pkl with code/ or constants.pkl); "
                "read plain torch checkpoints with clipkit.checkpoint.read_state_dict"
            )
        check_byteorder(zf, prefix, path)
        storages = ZipStorages(path, zf, prefix)
        data = read_entry(zf, f"{prefix}/data.pkl", path, limit=MAX_PICKLE_BYTES)
        root = safe_unpickle(data, lambda f: _ArchiveUnpickler(f, storages), path=path, what="data.pkl",
                             advice="Fetch it again; if you trust it, jit=True lets TorchScript itself load it")
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


def preflight(path: str | os.PathLike[str]) -> None:
    """Check a TorchScript archive before ``torch.jit.load`` (``jit=True``) reads it, without running anything.

    Every entry's declared size must be within the inflation cap for its
    compressed size, all entries together within the file's, and every pickle
    in it (``data.pkl``, ``constants.pkl``, ...) must pass the structure scan.
    What this cannot check, TorchScript trusts: the archive's code runs.
    Raises ``CheckpointError``.
    """
    path = Path(path)
    file_size = path.stat().st_size
    budget = TensorBudget(path, file_size)
    with open_zip(path) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                if info.file_size > inflate_cap(info.compress_size, file_size):
                    raise CheckpointError(
                        f"{path}: the compressed entry {info.filename} declares {info.file_size} bytes from "
                        f"{info.compress_size}; clipkit refuses zip bombs"
                    )
                budget.charge_inflation(info.filename, info.file_size)
            if info.filename.endswith(".pkl"):
                data = read_entry(zf, info.filename, path, limit=MAX_PICKLE_BYTES)
                scan_pickle(data, what=f"{path}: {info.filename}", file_size=file_size)


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


# -- the unpickler: torch's rules plus TorchScript's records ------------------------------------------


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


def _same(value: Any, *_: Any) -> Any:
    return value


def _as_list(value: Any, *_: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise pickle.UnpicklingError("a TorchScript list tag was given something that is not a list")
    return list(value)


class _ArchiveUnpickler(SafeUnpickler):
    """``data.pkl`` of a TorchScript archive: ``__torch__`` classes become records, typed lists plain lists."""

    def __init__(self, file: BinaryIO, storages: ZipStorages) -> None:
        super().__init__(file, storages, what="data.pkl")
        self._records: dict[str, type[_ScriptObject]] = {}

    def allowed(self) -> dict[tuple[str, str], Any]:
        table = super().allowed()
        for name in ("build_intlist", "build_floatlist", "build_doublelist", "build_boollist", "build_tensorlist"):
            table[("torch.jit._pickle", name)] = _as_list
        table[("torch.jit._pickle", "restore_type_tag")] = _same
        return table

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            record = self._records.get(qualified)
            if record is None:
                record = type("ScriptRecord", (_ScriptObject,), {"qualified_name": qualified})
                self._records[qualified] = record
            return record
        return super().find_class(module, name)

    def buildable(self, inst: Any) -> bool:
        return isinstance(inst, (_ScriptObject, Refused)) or super().buildable(inst)


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
        text = read_entry(self.zf, source, Path(self.zf.filename or "archive"), limit=MAX_JSON_BYTES)
        for line in text.decode("utf-8", "replace").splitlines():
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
