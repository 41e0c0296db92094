"""TorchScript: running CLIP archives with ``jit=True``, and exporting models to such archives.

The official releases were traced in float16 on a GPU, so their graphs carry
device constants (``"cuda:0"``) and half dtype constants. ``load_jit`` loads an
archive and rewrites those constants for the target device and dtype in every
graph of every submodule (``forward``, ``encode_image``, ``encode_text`` and the
``forward1``-style variants tracing leaves), walking graphs through the node
API (``kindOf``/``s``/``i``, never subscripting) and skipping methods an
archive does not define. Exporting a model to such an archive is
``clipkit.export.to_torchscript`` (formerly ``clipkit.jit.export_torchscript``).

Current torch marks ``torch.jit.load`` and ``torch.jit.trace`` deprecated.
clipkit calls ``torch.jit`` only here, and only for a user who asked for
TorchScript (``jit=True`` or an export); torch's deprecation message names
torch's own functions, which such a user does not call, so it is silenced
here. TorchScript itself remains deprecated upstream: ``jit=False`` gives the
same numbers from an ordinary module.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from clipkit.archive import preflight
from clipkit.checkpoint import is_torchscript_archive
from clipkit.errors import CheckpointNotFoundError, ConfigurationError, JITError

__all__ = ["load_jit", "patch_device", "patch_dtype", "script_graphs"]

# c10::ScalarType codes as serialized in TorchScript graphs (stable: archives depend on them)
_SCALAR_TYPE_CODES: dict[torch.dtype, int] = {
    torch.float16: 5,
    torch.float32: 6,
    torch.float64: 7,
    torch.bfloat16: 15,
}

_CLIP_METHODS = ("encode_image", "encode_text")


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Silence torch's TorchScript deprecation and tracer warnings for a user who asked for TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


# -- loading ---------------------------------------------------------------------------------------


def load_jit(
    path: str | os.PathLike[str],
    device: str | torch.device,
    *,
    dtype: torch.dtype | None = None,
) -> tuple[torch.jit.ScriptModule, int]:
    """Load the TorchScript CLIP archive at ``path`` for ``device``; return ``(model, input_resolution)``.

    The archive is loaded straight onto a CUDA target, and onto the CPU for
    every other target (``torch.jit.load`` cannot map to MPS: the patched
    model is moved afterwards). Every device constant in every graph is set to
    ``device``. ``dtype`` defaults to float16 on CUDA and float32 elsewhere.
    float16 runs the archive in its own precision (the releases' mixed fp16;
    an archive traced in float32 stays float32, since its float constants
    cannot be told from the deliberate float32 casts of its norms). Any other
    dtype rewrites the graphs' half constants to it and casts the half weights
    (float32 casts every weight, as ``model.float()``). The model is in eval
    mode. Raises ``JITError`` for a file that is not a TorchScript archive
    (use ``jit=False``), an archive TorchScript cannot load, or one that is
    not a CLIP model.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path} does not exist")
    target = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if target.type == "cuda" else torch.float32
    if dtype not in _SCALAR_TYPE_CODES:
        raise ConfigurationError(
            f"jit=True runs in float16, bfloat16, float32 or float64, not {dtype}; pass one of those as dtype"
        )
    if not is_torchscript_archive(path):
        raise JITError(
            f"{path} is a plain checkpoint (a state dict), not a TorchScript archive, so there is no program "
            "to run with jit=True; load it with jit=False"
        )
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {target} was asked for but CUDA is not available; pass device='cpu'")
    map_location = target if target.type == "cuda" else torch.device("cpu")
    preflight(path)
    try:
        with _quiet_torchscript():
            model = torch.jit.load(str(path), map_location=map_location)
    except RuntimeError as exc:
        raise JITError(
            f"TorchScript could not load {path}: {exc}. Load it with jit=False to read its weights as data"
        ) from exc
    missing = [name for name in _CLIP_METHODS if not _has_method(model, name)]
    if missing:
        raise JITError(
            f"{path} is a TorchScript archive but not a CLIP model: it has no {' or '.join(missing)} "
            f"(its methods: {', '.join(_method_names(model)) or 'none'}); clipkit loads CLIP models only"
        )
    resolution = _input_resolution(model, path)
    patch_device(model, target)
    if dtype != torch.float16:
        patch_dtype(model, torch.float16, dtype)
        if dtype == torch.float32:
            model.float()
        else:
            model._apply(lambda t: t.to(dtype) if t.dtype == torch.float16 else t)
    model.eval()
    if target != map_location:
        model.to(target)
    return model, resolution


def _has_method(module: torch.jit.ScriptModule, name: str) -> bool:
    try:
        return bool(module._c._has_method(name))
    except AttributeError:  # a torch without the private call: ask the Python wrapper
        return callable(getattr(module, name, None))


def _method_names(module: torch.jit.ScriptModule) -> list[str]:
    try:
        return list(module._c._method_names())
    except AttributeError:
        candidates = ["forward", *(f"forward{i}" for i in range(1, 8)), *_CLIP_METHODS]
        return [name for name in candidates if _has_method(module, name)]


def _input_resolution(model: torch.jit.ScriptModule, path: Path) -> int:
    for owner in (model, getattr(model, "visual", None)):
        value = getattr(owner, "input_resolution", None) if owner is not None else None
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return int(value.item())
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise JITError(
        f"{path} does not record its input_resolution (the official archives hold it as a buffer), so the "
        "image preprocessing cannot be chosen; load it with jit=False, which reads the resolution off the weights"
    )


# -- graph patching ------------------------------------------------------------------------------


def script_graphs(model: torch.jit.ScriptModule) -> Iterator[torch.Graph]:
    """Yield the graph of every method of ``model`` and of all its submodules.

    Methods are listed from each module's own method table, so an archive
    without ``forward`` (or with ``forward1``, ``forward2``... from tracing)
    is walked without error. Submodules of one TorchScript type share their
    methods, so each type's graphs come once. Functions called through
    ``prim::CallFunction`` are not walked (traced CLIP archives inline them).
    """
    seen: set[tuple[str, str]] = set()
    for module in model.modules():
        if not isinstance(module, torch.jit.ScriptModule):
            continue
        type_name = str(getattr(module._c, "qualified_name", id(module)))
        for name in _method_names(module):
            if (type_name, name) in seen:
                continue
            seen.add((type_name, name))
            try:
                yield module._c._get_method(name).graph
            except (RuntimeError, AttributeError):
                continue


def patch_device(model: torch.jit.ScriptModule, device: str | torch.device) -> int:
    """Set every device constant in ``model``'s graphs to ``device``; return how many were changed.

    Device constants are ``prim::Constant`` nodes of type ``Device``; their
    value is a string attribute read with ``kindOf``/``s`` and written with
    ``s_``. All of them are rewritten (``"cuda:0"``, ``"cpu"``, ...), so the
    graph creates every tensor on the target device.
    """
    target = str(torch.device(device))
    changed = 0
    for graph in script_graphs(model):
        for node in graph.findAllNodes("prim::Constant"):
            if not node.hasAttribute("value") or node.kindOf("value") != "s":
                continue
            if node.output().type().kind() != "DeviceObjType":
                continue
            if node.s("value") != target:
                node.s_("value", target)
                changed += 1
    return changed


@functools.lru_cache(maxsize=4096)
def _scalar_type_positions(schema: str) -> tuple[int, ...]:
    """Positions of the ScalarType (``dtype``) arguments in an operator schema; empty if it cannot be parsed."""
    try:
        arguments = torch._C.parse_schema(schema).arguments
    except RuntimeError:
        return ()
    positions = []
    for index, argument in enumerate(arguments):
        real_type = str(getattr(argument, "real_type", argument.type))
        if argument.name == "dtype" or "ScalarType" in real_type:
            positions.append(index)
    return tuple(positions)


def _dtype_inputs(node: torch._C.Node) -> Iterator[int]:
    """Indices of ``node``'s inputs that its schema declares as a ScalarType (``dtype``) argument."""
    try:
        schema = node.schema()
    except RuntimeError:
        return
    if schema == "(no schema)":
        return
    for index in _scalar_type_positions(schema):
        if index < node.inputsSize():
            yield index


def patch_dtype(model: torch.jit.ScriptModule, source: torch.dtype, target: torch.dtype) -> int:
    """Rewrite every constant ``source`` dtype argument in ``model``'s graphs to ``target``; return the count.

    Any op's ScalarType argument counts (``aten::to``, ``aten::zeros``,
    ``aten::arange``...), found through the op's schema rather than by input
    position. Rewritten uses are pointed at a new constant rather than the old
    constant edited, so an integer that TorchScript pooled with the dtype code
    (``5`` is half) keeps its value where it is not a dtype.
    """
    unknown = [str(d) for d in (source, target) if d not in _SCALAR_TYPE_CODES]
    if unknown:
        raise ConfigurationError(
            f"cannot patch dtype constants for {', '.join(unknown)}; use float16, bfloat16, float32 or float64"
        )
    old, new = _SCALAR_TYPE_CODES[source], _SCALAR_TYPE_CODES[target]
    changed = 0
    for graph in script_graphs(model):
        replacement = None
        for node in list(_all_nodes(graph)):
            for index in _dtype_inputs(node):
                producer = node.inputsAt(index).node()
                if producer.kind() != "prim::Constant" or not producer.hasAttribute("value"):
                    continue
                if producer.kindOf("value") != "i" or producer.i("value") != old:
                    continue
                if replacement is None:
                    with graph.insert_point_guard(next(iter(graph.nodes()))):
                        replacement = graph.insertConstant(new)
                node.replaceInput(index, replacement)
                changed += 1
    return changed


def _all_nodes(graph: torch.Graph) -> Iterator[torch._C.Node]:
    blocks = [graph.block()]
    while blocks:
        for node in blocks.pop().nodes():
            yield node
            blocks.extend(node.blocks())
