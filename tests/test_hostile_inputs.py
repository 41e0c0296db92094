"""Odd sources and files the QA of issue 9 found answered with a bare exception or the wrong words.

Each is refused in-process (nothing here allocates): a typed ``ClipkitError``
whose message names what was given. Shapes whose element count overflows
int64 and too many dimensions (safetensors and torch zip alike), paths the
OS cannot name, ``~user`` for no user, a ``PathLike`` returning an int, the
``meta`` device, procfs pseudo-files and a FIFO shard.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

import clipkit
import factories
from clipkit.checkpoint import read_state_dict
from clipkit.errors import CheckpointError, CheckpointNotFoundError, ConfigurationError


def _safetensors(path: Path, shape: list[int], data: bytes = b"") -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize("shape, words", [
    ([2**32, 2**32, 0], "overflows 64 bits"),  # zero elements, but torch's int64 product overflows first
    ([2**63 - 1, 2, 0], "overflows 64 bits"),
    ([1] * 65, "65 dimensions"),
])
def test_a_safetensors_shape_torch_cannot_hold_is_refused_naming_it(tmp_path: Path, shape: list[int],
                                                                    words: str) -> None:
    with pytest.raises(CheckpointError, match=words) as info:
        read_state_dict(_safetensors(tmp_path / "w.safetensors", shape))
    assert "'w'" in str(info.value)


def test_a_torch_zip_view_whose_shape_overflows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(4)}, path)
    import zipfile

    with zipfile.ZipFile(path) as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
    pkl = next(name for name in entries if name.endswith("data.pkl"))
    # the pickled size tuple (4,) becomes (2**32, 2**32, 0) with stride (0, 0, 1): protocol-2 ints as LONG1
    size, stride = b"K\x04\x85", b"K\x01\x85"
    assert entries[pkl].count(size) == 1 and entries[pkl].count(stride) == 1
    big = b"\x8a\x05\x00\x00\x00\x00\x01"  # LONG1 of 5 bytes: 2**32
    entries[pkl] = entries[pkl].replace(size, big + big + b"K\x00\x87").replace(stride, b"K\x00K\x00K\x01\x87")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    with pytest.raises(CheckpointError, match="overflows 64 bits"):
        read_state_dict(path)


class _IntPath:
    def __fspath__(self) -> Any:
        return 5


@pytest.mark.parametrize("source, error, words", [
    ("/tmp/" + "a" * 5000 + ".pt", ConfigurationError, "a component is 5003 bytes"),
    ("/tmp/" + ("a" * 250 + "/") * 30 + "x.pt", ConfigurationError, "the whole path is"),
    ("~no-such-user-clipkit/x.pt", CheckpointNotFoundError, "'~no-such-user-clipkit' names no user"),
    (_IntPath(), ConfigurationError, "_IntPath is an os.PathLike whose __fspath__ did not return a path"),
])
def test_sources_the_os_cannot_name_are_refused_with_a_typed_error(source: Any, error: type[Exception],
                                                                   words: str) -> None:
    with pytest.raises(error, match=words):
        clipkit.load(source, device="cpu")
    with pytest.raises(error):  # read_state_dict reads a path as given: "~x" may be a file's name
        read_state_dict(source)


def test_a_shard_name_too_long_for_the_os_is_refused(tmp_path: Path) -> None:
    index = {"metadata": {}, "weight_map": {"w": "a" * 5000}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="names shard .* too long"):
        read_state_dict(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_fifo_shard_is_called_a_fifo_not_missing(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "a.safetensors")
    index = {"metadata": {}, "weight_map": {"w": "a.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"a\.safetensors is a FIFO"):
        read_state_dict(tmp_path)


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs procfs")
def test_a_procfs_file_is_called_what_it_is(tmp_path: Path) -> None:
    for source in ("/proc/self/environ", "file:///proc/self/environ"):
        with pytest.raises(CheckpointError, match="/proc/self/environ is a kernel pseudo-file"):
            clipkit.load(source, device="cpu", download_root=tmp_path)


@pytest.mark.parametrize("device", ["meta", "xla", "lazy"])
def test_a_device_clipkit_cannot_place_weights_on_is_refused(tmp_path: Path, device: str) -> None:
    path = tmp_path / "tiny.pt"
    factories.write_checkpoint(path, factories.TINY_VIT)
    with pytest.raises(ConfigurationError, match=f"device '{device}' is not one clipkit can load weights onto"):
        clipkit.load(path, device=device)
