"""TorchScript archives made like the official CLIP releases, and hostile ones, built in code.

The releases are OpenAI's ``clip/model.py`` traced in float16 on a GPU, with
``input_resolution``, ``context_length`` and ``vocab_size`` buffers. Here the
same model code (OpenAI's ``clip`` package) is built from a random tiny state
dict (``factories.make_state_dict``, float16 where OpenAI's ``convert_weights``
halves) and traced on the CPU by ``clipkit.export.to_torchscript``: current
torch has CPU half kernels for every op CLIP uses, so the trace runs in
genuine mixed precision and its graphs carry half dtype constants (``5``) and
``"cpu"`` device constants. A *CUDA twin* is the same archive with its
serialized code's device constants rewritten to ``"cuda:0"`` and its pickles'
storage locations to ``"cuda:0"`` (as a GPU-saved archive has them); the code
files' ``.debug_pkl`` companions (source ranges, optional) are dropped because
the rewrite shifts the text they point into.

Stable API:

- ``make_release_archive(config, path, *, seed=0, cuda_twin=None) -> dict`` (the state dict traced)
- ``rewrite_device_constants(source, destination, device="cuda:0") -> Path``
- ``make_releases(root, configs=TINY_CONFIGS.values()) -> {name: (archive, cuda_twin, state_dict)}``
- ``device_constants(path_or_module) -> collections.Counter`` of the device strings in an archive's graphs
- ``make_setstate_archive(path) -> Path`` and ``TRACE``: an archive whose scripted
  ``__setstate__`` bumps ``TRACE["count"]``
- ``make_malicious_archive(path, payload) -> Path`` with ``payload_exec(code)``,
  ``payload_stack_global(module, name, arg)``, ``payload_nested(module, name, arg)``
- ``make_non_clip_archive(path)``, ``make_opaque_state_archive(path)``,
  ``make_archive_without_forward(config, path)``: each returns the path
- ``quiet_torchscript()``: a context that silences torch's TorchScript deprecation warnings
- ``write_zip(path, entries)``: a zip with stored, 64-byte-aligned tensor data, as torch writes them.
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import struct
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import factories
import oracles

__all__ = [
    "TRACE",
    "device_constants",
    "make_archive_without_forward",
    "make_malicious_archive",
    "make_non_clip_archive",
    "make_opaque_state_archive",
    "make_releases",
    "make_release_archive",
    "make_setstate_archive",
    "official_model",
    "quiet_torchscript",
    "payload_exec",
    "payload_nested",
    "payload_stack_global",
    "rewrite_device_constants",
    "write_zip",
]


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warnings while fixtures script, trace, save and load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


# -- archives like the releases ---------------------------------------------------------------------


def official_model(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """OpenAI's own ``clip.model.build_model`` on a copy of ``state_dict``: fp16 where the releases are, eval mode."""
    clip = oracles.openai_clip()
    return clip.model.build_model(dict(state_dict)).eval()


def make_release_archive(
    config: factories.CLIPConfig,
    path: str | Path,
    *,
    seed: int = 0,
    cuda_twin: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """Write a release-like fp16 TorchScript archive of ``config`` to ``path`` (and its CUDA twin to ``cuda_twin``).

    Returns the state dict that was traced (official layout, float16 where the
    releases are, without the metadata entries).
    """
    from clipkit.export import to_torchscript

    state_dict = factories.make_state_dict(config, seed=seed, dtype=torch.float16)
    to_torchscript(official_model(state_dict), path)
    if cuda_twin is not None:
        rewrite_device_constants(path, cuda_twin, "cuda:0")
    return state_dict


def make_archive_without_forward(config: factories.CLIPConfig, path: str | Path, *, seed: int = 0) -> Path:
    """A release-like archive whose top module has only ``encode_image`` and ``encode_text`` (no ``forward`` graph)."""
    state_dict = factories.make_state_dict(config, seed=seed, with_jit_metadata=False)
    model = official_model(state_dict)
    for key, value in zip(
        ("input_resolution", "context_length", "vocab_size"),
        (config.image_resolution, config.context_length, config.vocab_size),
        strict=True,
    ):
        model.__dict__.pop(key, None)
        model.register_buffer(key, torch.tensor(value))
    image = factories.sample_images(config)
    text = factories.sample_tokens(config)
    with quiet_torchscript():
        traced = torch.jit.trace_module(model, {"encode_image": (image,), "encode_text": (text,)}, check_trace=False)
        torch.jit.save(traced, str(path))
    return Path(path)


# -- rewriting an archive ------------------------------------------------------------------------------


def write_zip(path: str | Path, entries: Iterable[tuple[str, bytes]]) -> Path:
    """Write ``entries`` to a zip at ``path``, uncompressed, tensor data 64-byte aligned as torch writes it."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2021, 1, 5, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            if "/data/" in name or "/constants/" in name:
                start = zf.fp.tell() + 30 + len(name.encode()) + 4
                pad = -start % 64
                info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            zf.writestr(info, data)
    return path


def _relocate_storages(pickled: bytes, device: str) -> bytes:
    old = b"X" + struct.pack("<I", 3) + b"cpu"
    new = b"X" + struct.pack("<I", len(device)) + device.encode()
    return pickled.replace(old, new)


def rewrite_device_constants(source: str | Path, destination: str | Path, device: str = "cuda:0") -> Path:
    """Copy the archive ``source`` to ``destination`` with every ``torch.device("cpu")`` in its code set to ``device``.

    Storage locations in ``data.pkl``/``constants.pkl`` are set to ``device``
    too; ``.debug_pkl`` files are left out. Raises ``AssertionError`` if the
    code had no device constant to rewrite.
    """
    entries: list[tuple[str, bytes]] = []
    rewritten = 0
    with zipfile.ZipFile(source) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            if name.endswith(".debug_pkl"):
                continue
            if "/code/" in name and name.endswith(".py"):
                text = data.decode("utf-8")
                rewritten += text.count('torch.device("cpu")')
                data = text.replace('torch.device("cpu")', f'torch.device("{device}")').encode("utf-8")
            elif name.endswith("/data.pkl") or name.endswith("/constants.pkl"):
                data = _relocate_storages(data, device)
            entries.append((name, data))
    assert rewritten, f"{source} has no device constant in its code"
    return write_zip(destination, entries)


def device_constants(archive: str | Path | torch.jit.ScriptModule) -> collections.Counter[str]:
    """Count the device constants in the graphs of a loaded TorchScript module, or of the archive at a path."""
    from clipkit.jit import script_graphs

    if isinstance(archive, (str, Path)):
        with quiet_torchscript():
            archive = torch.jit.load(str(archive), map_location="cpu")
    found: collections.Counter[str] = collections.Counter()
    for graph in script_graphs(archive):
        for node in graph.findAllNodes("prim::Constant"):
            if node.hasAttribute("value") and node.output().type().kind() == "DeviceObjType":
                found[node.s("value")] += 1
    return found


def make_releases(root: str | Path, configs: Iterable[factories.CLIPConfig] = factories.TINY_CONFIGS.values()) -> dict:
    """``{name: (archive, cuda_twin, traced_state_dict)}`` for each config, written under ``root``."""
    root = Path(root)
    made = {}
    for config in configs:
        path, twin = root / f"{config.name}.pt", root / f"{config.name}-cuda.pt"
        made[config.name] = (path, twin, make_release_archive(config, path, cuda_twin=twin))
    return made


# -- an archive whose code leaves a trace when it runs ---------------------------------------------------

#: ``TRACE["count"]`` goes up each time an archive made by ``make_setstate_archive`` has its ``__setstate__`` run.
TRACE: dict[str, int] = {"count": 0}

_LIBRARY: Any = None


def _register_trace_op() -> None:
    """Register ``clipkit_test::leave_trace``, a custom op whose Python kernel increments ``TRACE["count"]``."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    library = torch.library.Library("clipkit_test", "DEF")
    library.define("leave_trace(Tensor x) -> Tensor")

    def leave_trace(x: torch.Tensor) -> torch.Tensor:
        TRACE["count"] += 1
        return x.clone()

    library.impl("leave_trace", leave_trace, "CPU")
    _LIBRARY = library


class _Marker(nn.Module):
    """Holds no weights; its TorchScript ``__setstate__`` calls the trace op when the archive is loaded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[bool]:
        return (self.training,)

    @torch.jit.export
    def __setstate__(self, state: tuple[bool]) -> None:
        # the op's result is used, so TorchScript cannot drop the call as dead code
        marked = torch.ops.clipkit_test.leave_trace(torch.zeros(1))
        self.training = bool(marked.numel() == 1) and state[0]


class _WithMarker(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("scale", torch.full((3,), 2.0))
        self.marker = _Marker()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.marker(self.linear(x) * self.scale)


def make_setstate_archive(path: str | Path) -> Path:
    """A scripted archive (``linear.*``, ``scale``) whose ``marker`` submodule's ``__setstate__`` bumps ``TRACE``."""
    _register_trace_op()
    torch.manual_seed(0)
    with quiet_torchscript():
        torch.jit.save(torch.jit.script(_WithMarker().eval()), str(path))
    return Path(path)


# -- hostile and non-CLIP archives ----------------------------------------------------------------------------


def _binunicode(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def payload_exec(code: str) -> bytes:
    """A protocol-2 pickle that calls ``builtins.exec(code)`` when unpickled."""
    return b"\x80\x02cbuiltins\nexec\n" + _binunicode(code) + b"\x85R."


def payload_stack_global(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle that calls ``module.name(arg)`` through STACK_GLOBAL."""
    return b"\x80\x04" + _binunicode(module) + _binunicode(name) + b"\x93" + _binunicode(arg) + b"\x85R."


def payload_nested(module: str, name: str, arg: str) -> bytes:
    """A module record as TorchScript writes it whose state hides a ``module.name(arg)`` call among ordinary entries."""
    return (
        b"\x80\x02c__torch__.model\nCLIP\n)\x81}("  # record, NEWOBJ, state dict, MARK
        + _binunicode("training")
        + b"\x89"  # False
        + _binunicode("extra")
        + f"c{module}\n{name}\n".encode()
        + _binunicode(arg)
        + b"\x85Ru"  # call, SETITEMS
        + b"b."  # BUILD, STOP
    )


def payload_cycle() -> bytes:
    """A module record whose ``child`` entry is the record itself (memoised, then fetched back with BINGET)."""
    return (
        b"\x80\x02c__torch__.model\nCLIP\n)\x81q\x00}("  # record, NEWOBJ, memo 0, state dict, MARK
        + _binunicode("training")
        + b"\x89"
        + _binunicode("child")
        + b"h\x00"  # the record itself
        + b"ub."
    )


def make_malicious_archive(path: str | Path, payload: bytes) -> Path:
    """A TorchScript-shaped archive (``code/``, ``constants.pkl``) whose ``data.pkl`` is ``payload``."""
    entries = [
        ("evil/data.pkl", payload),
        ("evil/code/__torch__/model.py", b"class CLIP(Module):\n  __parameters__ = []\n  __buffers__ = []\n"),
        ("evil/constants.pkl", pickle.dumps((), protocol=2)),
        ("evil/version", b"3\n"),
    ]
    return write_zip(path, entries)


class _NotClip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).relu()


def make_non_clip_archive(path: str | Path) -> Path:
    """A TorchScript archive of a small classifier: a valid archive with no ``encode_image``/``encode_text``."""
    torch.manual_seed(0)
    with quiet_torchscript():
        torch.jit.save(torch.jit.script(_NotClip().eval()), str(path))
    return Path(path)


class _Opaque(nn.Module):
    """A weight kept behind a custom ``__getstate__``: it cannot be read without running the archive's code."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]


def make_opaque_state_archive(path: str | Path) -> Path:
    """A scripted archive whose one module keeps its parameter behind a custom ``__getstate__``/``__setstate__``."""
    with quiet_torchscript():
        torch.jit.save(torch.jit.script(_Opaque().eval()), str(path))
    return Path(path)
