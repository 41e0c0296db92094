"""The one restricted unpickler every torch pickle goes through: tensors, containers and numbers, nothing else.

Torch zip files, legacy torch pickles and TorchScript archives all pickle
tensors the same way: ``torch._utils._rebuild_tensor_v2`` (or ``_v3``) over a
storage named by a persistent id. ``SafeUnpickler`` is Python's own
(pure-Python) unpickler with three changes: ``find_class`` answers from a
short allowlist (refused names are collected and reported together as
``UnsafeCheckpointError``); every tensor rebuild is checked against the file's
``TensorBudget`` before torch sees it (no view past its storage, no zero or
overlapping strides); and ``BUILD`` only sets the state of clipkit's own inert
records. numpy values are accepted only as plain numeric scalars and arrays
(bool, int, uint, float, complex): they become ``NumpyValue`` records, so raw
bytes can never be read as pointers. The stream is first bounded by
``clipkit.pickle_scan.scan_pickle``.
"""

from __future__ import annotations

import _compat_pickle
import io
import math
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch

from clipkit import pickle_values
from clipkit.errors import CheckpointError, UnsafeCheckpointError
from clipkit.limits import TensorBudget
from clipkit.pickle_scan import scan_pickle

__all__ = ["NumpyValue", "SafeUnpickler", "StorageProvider", "StorageRef", "safe_unpickle"]

STORAGE_DTYPES: dict[str, torch.dtype] = {
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
    "UntypedStorage": torch.uint8,  # torch.storage.UntypedStorage: counted in bytes, typed by _rebuild_tensor_v3
}
_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)
_NUMPY_KINDS = "biufc"  # bool, int, uint, float, complex: values that are only numbers
_NUMPY_CODES = {f"{kind}{size}" for kind, sizes in {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8),
                                                    "f": (2, 4, 8, 16), "c": (8, 16, 32)}.items() for size in sizes}


class StorageProvider(Protocol):
    """Where a file's storages come from: ``storage(key, dtype, numel)`` returns untyped bytes, budget charged."""

    budget: TensorBudget

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.UntypedStorage: ...


class StorageRef:
    """A storage handed to the pickle: inert (no ``__dict__``, no ``__setstate__``), typed by its pickle name."""

    __slots__ = ("dtype", "key", "untyped")

    def __init__(self, key: str, dtype: torch.dtype, untyped: torch.UntypedStorage) -> None:
        self.key = key
        self.dtype = dtype
        self.untyped = untyped


class _StorageType:
    """What ``torch.<Type>Storage`` becomes: just the dtype it names."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _TypeTag:
    """What a harmless class name (``numpy.ndarray``, ``torch.nn.Parameter``) becomes: a name, not a class."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Refused:
    """What a refused global becomes while the pickle is read to its end: inert, collecting nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class NumpyValue:
    """A numpy scalar, array or dtype from a training checkpoint, checked to be plain numbers.

    ``value`` is the numpy object (a copy of its bytes), set once its state is
    read. clipkit keeps only tensors, so these are dropped by
    ``flatten_checkpoint``; they exist so that nothing else is built.
    """

    def __init__(self, unpickler: SafeUnpickler, kind: str, dtype: np.dtype | None = None) -> None:
        self._unpickler = unpickler
        self.kind = kind
        self.dtype = dtype
        self.value: Any = dtype if kind == "dtype" else None

    def __setstate__(self, state: Any) -> None:
        if self.kind == "dtype":
            self.value = self.dtype = self._unpickler.numpy_dtype_state(self.dtype, state)
        elif self.kind == "array":
            self.value = self._unpickler.numpy_array_state(state)
        else:
            raise pickle.UnpicklingError("a numpy scalar was given a state")

    def __repr__(self) -> str:
        return f"NumpyValue({self.value!r})"


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """Unpickles one torch pickle stream against a ``StorageProvider``; see the module docstring for the rules."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: BinaryIO, provider: StorageProvider, *, what: str) -> None:
        super().__init__(file, encoding="utf-8")
        self.provider = provider
        self.what = what
        self.refused: list[str] = []
        self.details: list[str] = []
        self._allowed = self.allowed()
        self._storages: dict[str, StorageRef] = {}
        self._tensors = 0

    # -- names ---------------------------------------------------------------------------------------

    def allowed(self) -> dict[tuple[str, str], Any]:
        """``(module, name) -> object`` for the globals this unpickler accepts (subclasses add their own)."""
        table: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v3"): self.rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): self.rebuild_from_type,
            ("torch.nn.parameter", "Parameter"): _TypeTag("Parameter"),
            ("torch._tensor", "Tensor"): _TypeTag("Tensor"),
            ("torch", "Tensor"): _TypeTag("Tensor"),
            ("torch", "Size"): pickle_values.size,
            ("torch", "device"): pickle_values.device,
            ("collections", "OrderedDict"): OrderedDict,
            ("collections", "Counter"): pickle_values.counter,
            ("torch.serialization", "_get_layout"): pickle_values.layout,
            ("builtins", "set"): pickle_values.plain(set),
            ("builtins", "frozenset"): pickle_values.plain(frozenset),
            ("builtins", "slice"): slice,
            ("builtins", "complex"): complex,
            ("builtins", "bytearray"): pickle_values.bytearray_of,
            ("_codecs", "encode"): pickle_values.encode,
            ("numpy", "ndarray"): _TypeTag("numpy.ndarray"),
            ("numpy", "dtype"): self.numpy_dtype,
        }
        for core in ("numpy.core", "numpy._core"):
            table[(f"{core}.multiarray", "_reconstruct")] = self.numpy_reconstruct
            table[(f"{core}.multiarray", "scalar")] = self.numpy_scalar
            table[(f"{core}.numeric", "_frombuffer")] = self.numpy_frombuffer
        return table

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; anything else is recorded as refused and becomes inert.

        Python 2 names (``__builtin__.set``, written by protocols 0-2) are mapped
        to Python 3's first, as ``pickle`` itself does.
        """
        if self.proto < 3:
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self._allowed.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in STORAGE_DTYPES or (module, name) == ("torch.storage", "UntypedStorage"):
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_CONSTANTS):
            return getattr(torch, name)  # torch.float16, torch.strided, torch.channels_last: inert constants
        return self.refuse(f"{module}.{name}")

    def refuse(self, name: str, detail: str = "") -> type[Refused]:
        """Record the global ``name`` as refused (``detail`` says why) and return an inert stand-in.

        Unpickling goes on, so one error can list every refusal.
        """
        self.refused.append(name)
        if detail:
            self.details.append(f"{name} {detail}")
        return type("Refused", (Refused,), {})

    # -- storages and tensors ----------------------------------------------------------------------------

    def persistent_load(self, pid: Any) -> StorageRef:
        """Resolve ``('storage', type, key, location, numel[, view])`` to this file's storage ``key``."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("legacy storage views are not supported")
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        if "/" in key or "\\" in key or key in ("", ".", "..") or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage key {key!r:.40}")
        ref = self._storages.get(key)
        if ref is None:
            ref = StorageRef(key, storage_type.dtype, self.provider.storage(key, storage_type.dtype, numel))
            self._storages[key] = ref
        return ref

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
        """``_rebuild_tensor_v2``: a view of ``storage`` in its own dtype, checked against the budget."""
        if not isinstance(storage, StorageRef):
            raise pickle.UnpicklingError("a tensor was rebuilt from something that is not a storage of this file")
        return self._view(storage, storage.dtype, offset, size, stride)

    def rebuild_tensor_v3(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                          hooks: Any = None, dtype: Any = None, *rest: Any) -> torch.Tensor:
        """``_rebuild_tensor_v3``: like v2, with the dtype given explicitly (for dtypes without a storage class)."""
        if not isinstance(storage, StorageRef) or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError("a tensor was rebuilt from something that is not a storage of this file")
        return self._view(storage, dtype, offset, size, stride)

    def rebuild_from_type(self, func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
        """``_rebuild_from_type_v2`` for plain tensors and parameters: the rebuilt tensor, its Python state ignored."""
        if func not in (self.rebuild_tensor, self.rebuild_tensor_v3, _rebuild_parameter) or not isinstance(args, tuple):
            raise pickle.UnpicklingError("a tensor subclass was rebuilt by something that is not a tensor rebuild")
        if not isinstance(new_type, _TypeTag):
            raise pickle.UnpicklingError("a tensor was rebuilt as a type clipkit does not read")
        return func(*args)

    def _view(self, storage: StorageRef, dtype: torch.dtype, offset: Any, size: Any, stride: Any) -> torch.Tensor:
        if not (isinstance(size, tuple) and isinstance(stride, tuple)) or not all(
            type(v) is int for v in (offset, *size, *stride)
        ):
            raise pickle.UnpicklingError("a tensor's offset, size or stride is not made of integers")
        self._tensors += 1
        itemsize = torch.empty((), dtype=dtype).element_size()
        what = f"{self._nearest_name()}(#{self._tensors}, storage {storage.key})"
        self.provider.budget.charge_view(what, storage.untyped.nbytes(), offset, size, stride, itemsize)
        return torch.empty((0,), dtype=dtype).set_(storage.untyped, offset, size, stride)

    def _nearest_name(self) -> str:
        """The key the tensor being rebuilt will be stored under, when the pickle's stack shows it (else "")."""
        for value in reversed(self.stack):
            if isinstance(value, str):
                return f"{value[:200]!r} "
        return ""

    # -- numpy, as plain numbers only -------------------------------------------------------------------

    def numpy_dtype(self, code: Any, align: Any = False, copy: Any = True) -> NumpyValue | Refused:
        """``numpy.dtype(code, ...)`` for plain numeric codes only (``f4``, ``i8``, ``b1``, ``c16`` ...)."""
        if not isinstance(code, str) or code not in _NUMPY_CODES:
            return self.refuse("numpy.dtype", f"for {code!r:.20}: only bool, int, uint, float and complex are read")()
        return NumpyValue(self, "dtype", np.dtype(code))

    def numpy_dtype_state(self, dtype: Any, state: Any) -> np.dtype:
        """A plain numeric dtype's pickled state: a byte order, no fields, no sub-arrays, no object flags."""
        if not (isinstance(dtype, np.dtype) and isinstance(state, tuple) and len(state) in (8, 9)):
            raise pickle.UnpicklingError("a numpy dtype has a malformed state")
        _version, order, subarray, names, fields, _size, _align, flags = state[:8]
        if subarray is not None or names is not None or fields is not None or flags != 0:
            self.refuse("numpy.dtype", "with fields, sub-arrays or object flags (a structured or object dtype)")
            return dtype
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"a numpy dtype has byte order {order!r:.10}")
        return dtype.newbyteorder(order) if order in "<>" else dtype

    def numpy_reconstruct(self, cls: Any, shape: Any, code: Any) -> NumpyValue:
        """``numpy...._reconstruct(numpy.ndarray, ...)``: an empty array record, filled by its checked state."""
        if not (isinstance(cls, _TypeTag) and cls.name == "numpy.ndarray"):
            raise pickle.UnpicklingError("numpy's _reconstruct was asked for something that is not numpy.ndarray")
        return NumpyValue(self, "array")

    def numpy_array_state(self, state: Any) -> np.ndarray | None:
        """An array's state ``(version, shape, dtype, fortran, bytes)``: a plain dtype and exactly enough bytes."""
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("a numpy array has a malformed state")
        _version, shape, dtype, fortran, data = state
        if not (isinstance(dtype, NumpyValue) and dtype.kind == "dtype" and isinstance(dtype.dtype, np.dtype)):
            self.refuse("numpy.ndarray", "of a dtype that is not plain numbers")
            return None
        dt = dtype.dtype
        if isinstance(data, str):
            data = data.encode("latin1")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise pickle.UnpicklingError("a numpy array has a malformed shape")
        if dt.kind not in _NUMPY_KINDS or dt.hasobject or not isinstance(data, (bytes, bytearray)):
            self.refuse("numpy.ndarray", f"of dtype {dt.str}")
            return None
        if len(data) != math.prod(shape) * dt.itemsize:
            raise pickle.UnpicklingError(f"a numpy array of shape {shape} has {len(data)} bytes of data")
        return np.frombuffer(bytes(data), dtype=dt).reshape(shape, order="F" if fortran else "C").copy()

    def numpy_frombuffer(self, data: Any, dtype: Any, shape: Any, order: Any = "C") -> NumpyValue:
        """``numpy...._frombuffer(bytes, dtype, shape, order)`` (pickle protocol 5): checked as an array's state."""
        value = NumpyValue(self, "array")
        value.value = self.numpy_array_state((1, shape, dtype, order == "F", data))
        return value

    def numpy_scalar(self, dtype: Any, data: Any = None) -> NumpyValue | Refused:
        """``numpy...scalar(dtype, bytes)``: a numeric scalar of exactly its dtype's size."""
        if not (isinstance(dtype, NumpyValue) and dtype.kind == "dtype" and isinstance(dtype.dtype, np.dtype)):
            return self.refuse("numpy.scalar", "of a dtype that is not plain numbers")()
        if isinstance(data, str):
            data = data.encode("latin1")
        if not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize or dtype.dtype.kind not in _NUMPY_KINDS:
            return self.refuse("numpy.scalar", f"of dtype {dtype.dtype.str} or with the wrong number of bytes")()
        value = NumpyValue(self, "scalar")
        value.value = np.frombuffer(data, dtype=dtype.dtype)[0]
        return value

    # -- BUILD only on clipkit's records ----------------------------------------------------------------

    def load_build(self) -> None:
        """``BUILD``: set the state of a record or an ``OrderedDict`` (its ``_metadata``); refuse any other object."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, OrderedDict) and type(inst) is OrderedDict:
            if isinstance(state, dict) and all(isinstance(k, str) for k in state):
                inst.__dict__.update(state)
                return
            raise pickle.UnpicklingError("an OrderedDict was given a state that is not a dict of names")
        setstate = getattr(type(inst), "__setstate__", None)
        if not self.buildable(inst) or setstate is None:
            raise pickle.UnpicklingError(f"the pickle sets the state of a {type(inst).__name__}, which clipkit refuses")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build

    def buildable(self, inst: Any) -> bool:
        """Whether ``BUILD`` may set ``inst``'s state (clipkit's records; subclasses add theirs)."""
        return isinstance(inst, (NumpyValue, Refused))


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *state: Any) -> Any:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter was rebuilt from something that is not a tensor")
    return data


def safe_unpickle(data: bytes | BinaryIO, unpickler: Callable[[BinaryIO], SafeUnpickler], *, path: Path,
                  what: str, advice: str = "") -> Any:
    """Scan, then unpickle one stream with ``unpickler(stream)``; every failure becomes a typed error.

    ``what`` names the stream (``data.pkl``) in messages, ``advice`` is added
    to a ``CheckpointError``'s message. Refused globals raise
    ``UnsafeCheckpointError`` listing them all; a budget or structure problem
    raises ``CheckpointError``.
    """
    try:
        return _safe_unpickle(data, unpickler, path=path, what=what)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as exc:
        if advice:
            exc.args = (f"{exc}. {advice}",)
        raise


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _safe_unpickle(data: bytes | BinaryIO, unpickler: Callable[[BinaryIO], SafeUnpickler], *, path: Path,
                   what: str) -> Any:
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    start = stream.tell()
    scan_pickle(stream, what=f"{path}: {what}", file_size=_size_of(path))
    stream.seek(start)
    reader = unpickler(stream)
    failure: Exception | None = None
    try:
        result = reader.load()
    except (CheckpointError, MemoryError) as exc:
        failure = exc
    except Exception as exc:  # noqa: BLE001 - a crafted pickle can fail anywhere; judged below
        failure = exc
    if reader.refused:
        refused = sorted(set(reader.refused))
        why = f" ({'; '.join(sorted(set(reader.details)))})" if reader.details else ""
        raise UnsafeCheckpointError(
            f"{path}: {what} asks for {', '.join(refused)}{why}, which plain weights never need; clipkit refused to "
            "unpickle it (it reads only tensors, containers and plain numbers). Do not load this file unless you "
            "trust it; then re-save just its weights",
            globals=refused,
        )
    if isinstance(failure, CheckpointError):
        raise failure
    if isinstance(failure, MemoryError):
        raise CheckpointError(f"{path}: {what} needs more memory than this process has; the file is crafted") from None
    if failure is not None:
        raise CheckpointError(
            f"{path}: {what} could not be read as data ({type(failure).__name__}: {str(failure)[:200]}); "
            "the file is damaged, crafted, or written by an unusual exporter"
        ) from failure
    return result
