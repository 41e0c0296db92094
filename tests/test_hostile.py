"""Hostile files: each crafted in code, loaded in a child process with a memory limit, answered with a typed error.

One row of issue 9's table a test. The child (``tests/sandbox.py``) survives
nothing it should not: a crash is reported as ``crash:<signal>``, any exception
that is not a ``ClipkitError`` as ``other:<type>``, and each case's peak-RSS
growth is measured, so every test asserts the error type, that the child
exited normally, and that memory stayed small.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import factories
import hostile
from sandbox import run_cases

MB = 1024  # rss_growth_kb is in KiB
SMALL = 200 * MB  # what refusing any of these files may cost, far below what the attacks asked for


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Any]]:
    """Every crafted case, built once and run in one sandboxed child: name -> (case, result)."""
    root = tmp_path_factory.mktemp("hostile")
    path, sock = hostile.socket_file(root)
    cases: list[dict[str, Any]] = [
        {"name": "numpy-object", "call": "read", "source": str(hostile.numpy_object_pointer(root))},
        {"name": "stride0", "call": "load", "source": str(hostile.stride0_checkpoint(root))},
        {"name": "nested-safetensors", "call": "read", "source": str(hostile.nested_safetensors(root))},
        {"name": "empty-source", "call": "load", "source": ""},
        {"name": "fifo", "call": "load", "source": str(hostile.fifo(root))},
        {"name": "dev-zero", "call": "load", "source": "/dev/zero"},
        {"name": "file-url-dev-zero", "call": "load", "source": "file:///dev/zero", "kwargs": {"sha256": "0" * 64}},
        {"name": "socket", "call": "load", "source": str(path)},
        {"name": "dtype-nonsense", "call": "load", "source": str(hostile.deflated_torch_zip(root, "data0")),
         "kwargs": {"dtype": "nonsense"}},
    ]
    for entry in ("byteorder", "data.pkl", "data/0"):
        bomb = str(hostile.deflate_bomb_archive(root, entry))
        cases.append({"name": f"bomb-{entry}", "call": "read", "source": bomb})
        cases.append({"name": f"bomb-{entry}-jit", "call": "load", "source": bomb, "kwargs": {"jit": True}})
    cases.append({"name": "legacy-long-length", "call": "read", "source": str(hostile.legacy_long_length(root))})
    for fmt in ("zip", "legacy", "torchscript"):
        cases.append({"name": f"nested-{fmt}", "call": "read", "source": str(hostile.nested_tuple(root, fmt))})
    for name, folder in (("index-nested", hostile.nested_index(root / "a")),
                         ("index-parent", hostile.escaping_index(root / "b", "../outside.safetensors")),
                         ("index-absolute", hostile.escaping_index(root / "c", str(root / "x.safetensors")))):
        cases.append({"name": name, "call": "read", "source": str(folder)})
    try:
        results = run_cases(cases)
    finally:
        sock.close()
    return {case["name"]: (case, results.get(case["name"])) for case in cases}


def _refused(crafted: dict, name: str, error: str, *words: str) -> dict[str, Any]:
    case, result = crafted[name]
    assert result is not None, f"{name} never ran"
    assert result["status"] == 0, f"{name}: the child died ({result['outcome']}): {result['message']}"
    assert result["outcome"] == error, f"{name}: {result['outcome']}: {result['message']}"
    for word in words:
        assert word in result["message"], f"{name}: {word!r} not in {result['message']!r}"
    assert 0 <= result["rss_growth_kb"] < SMALL, f"{name}: peak RSS grew by {result['rss_growth_kb']} KiB"
    return result


def test_a_numpy_void_dtype_with_an_object_field_is_refused_naming_the_global(crafted) -> None:
    _refused(crafted, "numpy-object", "UnsafeCheckpointError", "numpy.dtype", "'V8'")


@pytest.mark.parametrize("entry", ["byteorder", "data.pkl", "data/0"])
@pytest.mark.parametrize("jit", [False, True])
def test_a_deflate_bomb_in_a_torchscript_archive_is_refused_cheaply(crafted, entry: str, jit: bool) -> None:
    _refused(crafted, f"bomb-{entry}{'-jit' if jit else ''}", "CheckpointError", entry)


def test_a_stride0_expanded_embedding_is_refused_before_it_is_materialised(crafted) -> None:
    _refused(crafted, "stride0", "CheckpointError", "stride [0, 1]", "4000000")


@pytest.mark.parametrize("fmt", ["zip", "legacy", "torchscript"])
def test_a_tuple_nested_a_million_deep_is_refused_by_the_opcode_scan(crafted, fmt: str) -> None:
    _refused(crafted, f"nested-{fmt}", "CheckpointError", "nests values more than")


def test_a_length_field_claiming_gigabytes_allocates_nothing(crafted) -> None:
    _refused(crafted, "legacy-long-length", "CheckpointError", "4294967295 bytes", "not a well-formed pickle")


def test_a_safetensors_header_nested_deep_is_refused(crafted) -> None:
    _refused(crafted, "nested-safetensors", "CheckpointError", "safetensors header", "nests JSON")


def test_a_shard_index_nested_deep_is_refused(crafted) -> None:
    _refused(crafted, "index-nested", "CheckpointError", "index.json", "nests JSON")


@pytest.mark.parametrize("name", ["index-parent", "index-absolute"])
def test_a_shard_index_naming_a_file_outside_its_folder_is_refused(crafted, name: str) -> None:
    result = _refused(crafted, name, "CheckpointError", "outside the checkpoint's folder")
    assert "outside.safetensors" in result["message"] or "x.safetensors" in result["message"]


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("empty-source", "ConfigurationError", ("source is empty", "''")),
        ("fifo", "CheckpointError", ("pipe.pt", "FIFO")),
        ("dev-zero", "CheckpointError", ("/dev/zero", "character device")),
        ("file-url-dev-zero", "CheckpointError", ("/dev/zero", "character device")),
        ("socket", "CheckpointError", ("sock.pt", "socket")),
        ("dtype-nonsense", "ConfigurationError", ("'nonsense'",)),
    ],
)
def test_odd_inputs_each_get_their_own_answer_naming_what_was_given(crafted, name: str, error: str, words) -> None:
    _refused(crafted, name, error, *words)


@pytest.mark.parametrize("which", ["data0", "all"])
def test_a_deflated_torch_zip_loads_the_same_weights_torch_reads(tmp_path: Path, which: str) -> None:
    from clipkit.checkpoint import read_state_dict

    path = hostile.deflated_torch_zip(tmp_path, which)
    reference = torch.load(path, weights_only=True)
    ours = read_state_dict(path)
    assert list(ours) == list(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_a_legacy_file_reads_the_same_weights_torch_reads(tmp_path: Path) -> None:
    from clipkit.checkpoint import read_state_dict

    path = tmp_path / "legacy.pt"
    path.write_bytes(hostile.legacy_bytes({"state_dict": hostile.state_dict(), "epoch": 2}))
    reference = torch.load(path, weights_only=True)["state_dict"]
    ours = read_state_dict(path)
    assert all(torch.equal(ours[key], value) for key, value in reference.items()) and list(ours) == list(reference)


@pytest.mark.parametrize(("legacy", "protocol"), [(False, 2), (True, 2), (False, 5)])
def test_plain_values_in_a_training_checkpoint_still_load(tmp_path: Path, legacy: bool, protocol: int) -> None:
    import numpy as np

    from clipkit.checkpoint import read_state_dict

    path = tmp_path / "train.pt"
    extras = {"epoch": np.int64(3), "loss": np.float32(0.5), "curve": np.arange(6.0).reshape(2, 3),
              "flags": np.array([True, False]), "z": np.array([1 + 2j], dtype=">c16"), "seen": {1, 2},
              "frozen": frozenset([3]), "raw": bytearray(b"xy"), "window": slice(1, 2), "c": 1 + 2j,
              "size": torch.Size([2, 3]), "device": torch.device("cpu"), "dtype": torch.float16}
    torch.save({"state_dict": hostile.state_dict(), **extras}, path, _use_new_zipfile_serialization=not legacy,
               pickle_protocol=protocol)
    ours = read_state_dict(path)
    assert set(ours) == set(factories.make_state_dict(factories.TINY_VIT))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_read_state_dict_never_opens_a_fifo(tmp_path: Path) -> None:
    from clipkit.checkpoint import read_state_dict
    from clipkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="FIFO"):
        read_state_dict(hostile.fifo(tmp_path))


def test_an_integer_too_wide_to_print_is_refused_by_the_scan(tmp_path: Path) -> None:
    from clipkit.checkpoint import read_state_dict
    from clipkit.errors import CheckpointError

    path = tmp_path / "wide.pt"
    path.write_bytes(hostile.legacy_bytes({"w": torch.ones(2)}))
    data = path.read_bytes()
    key = b"X" + (1).to_bytes(4, "little") + b"w"  # BINUNICODE 'w': the dict key's opcode
    wide = (2**20000).to_bytes(2501, "little", signed=True)
    path.write_bytes(data.replace(key, b"\x8b" + len(wide).to_bytes(4, "little") + wide, 1))
    with pytest.raises(CheckpointError, match="integer of 20001 bits"):
        read_state_dict(path)


class _TensorWithState:
    """Pickles as a tensor followed by BUILD with ``(storage, offset, size, stride)``: ``Tensor.__setstate__`` would
    ``set_`` it to a stride-0 view of a million rows, past every check made when the tensor was rebuilt."""

    def __init__(self, base: torch.Tensor) -> None:
        self.base = base

    def __reduce__(self):
        from collections import OrderedDict

        storage = self.base.untyped_storage()
        return (torch._utils._rebuild_tensor_v2, (storage, 0, (4,), (1,), False, OrderedDict()),
                (storage, 0, (1_000_000, 4), (0, 1)))


def test_a_tensor_given_a_state_by_build_is_refused(tmp_path: Path) -> None:
    from clipkit.checkpoint import read_state_dict
    from clipkit.errors import CheckpointError

    path = tmp_path / "build.pt"
    torch.save({"w": _TensorWithState(torch.ones(4))}, path)
    assert torch.load(path, weights_only=True)["w"].shape == (1_000_000, 4)  # what torch's own reader allows
    with pytest.raises(CheckpointError, match="sets the state of a Tensor"):
        read_state_dict(path)
