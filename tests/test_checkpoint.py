"""Reading checkpoint files: every format, every wrapper, and every way a file can be bad."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clipkit.checkpoint import flatten_checkpoint, read_safetensors, read_state_dict
from clipkit.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "visual.proj": torch.randn(4, 3, generator=g).half(),
        "ln_final.weight": torch.randn(4, generator=g),
        "logit_scale": torch.tensor(4.6052),
        "token_embedding.weight": torch.randn(10, 4, generator=g),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def test_torch_zip_is_memory_mapped(tmp_path, weights):
    path = tmp_path / "w.pt"
    torch.save(weights, path)
    loaded = read_state_dict(path)
    assert_same(loaded, weights)
    # mmap=True: the tensors' storage is a file mapping, not a private heap copy
    storage = loaded["visual.proj"].untyped_storage()
    assert storage.filename is not None or not storage.resizable()


def test_legacy_pickle_format(tmp_path, weights):
    path = tmp_path / "legacy.pt"
    torch.save(weights, path, _use_new_zipfile_serialization=False)
    assert_same(read_state_dict(path), weights)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_training_wrappers_with_numpy_scalars_and_ddp_prefix(tmp_path, weights, wrapper):
    path = tmp_path / "train.pt"
    torch.save(
        {
            "epoch": np.int64(7),
            "best_acc": np.float32(0.61),
            "lr": np.float64(1e-4),
            "history": np.array([0.1, 0.2]),
            "name": "run-3",
            wrapper: {f"module.{k}": v for k, v in weights.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        },
        path,
    )
    assert_same(read_state_dict(path), weights)


def test_nested_open_clip_style_wrapper(weights):
    assert_same(flatten_checkpoint({"model": {"state_dict": weights}, "epoch": 3}), weights)


def test_safetensors_is_zero_copy(tmp_path, weights):
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    loaded = read_safetensors(path)
    assert_same(dict(sorted(loaded.items())), dict(sorted(weights.items())))
    # every tensor is a view of one shared mapping of the file
    pointers = {t.untyped_storage().data_ptr() for t in loaded.values()}
    assert len(pointers) == 1
    # copy-on-write: writing to a loaded tensor leaves the file untouched
    before = path.read_bytes()
    loaded["ln_final.weight"].add_(1)
    assert path.read_bytes() == before


def test_directory_of_safetensors_shards(tmp_path, weights):
    keys = list(weights)
    save_file({k: weights[k] for k in keys[:2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: weights[k] for k in keys[2:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    loaded = read_state_dict(tmp_path)
    assert sorted(loaded) == sorted(keys)


def test_directory_shards_listed_by_an_index_file(tmp_path, weights):
    import json

    keys = list(weights)
    save_file({k: weights[k] for k in keys[:1]}, str(tmp_path / "part-a.safetensors"))
    save_file({k: weights[k] for k in keys[1:]}, str(tmp_path / "part-b.safetensors"))
    save_file({"unrelated": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    index = {"weight_map": {k: "part-a.safetensors" if i < 1 else "part-b.safetensors" for i, k in enumerate(keys)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert sorted(read_state_dict(tmp_path)) == sorted(keys)


def test_hub_snapshot_with_two_layouts_reads_model_safetensors_only(tmp_path, weights):
    save_file(weights, str(tmp_path / "model.safetensors"))
    save_file({"visual.other": torch.zeros(2)}, str(tmp_path / "open_clip_model.safetensors"))
    assert sorted(read_state_dict(tmp_path)) == sorted(weights)


def test_directory_with_two_unrelated_safetensors_is_refused(tmp_path, weights):
    save_file(weights, str(tmp_path / "a.safetensors"))
    save_file(weights, str(tmp_path / "b.safetensors"))
    with pytest.raises(CheckpointError, match="a.safetensors, b.safetensors"):
        read_state_dict(tmp_path)


def test_directory_with_two_candidates_is_refused(tmp_path, weights):
    torch.save(weights, tmp_path / "a.pt")
    torch.save(weights, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="a.pt, b.pt"):
        read_state_dict(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "content",
    [b"<html><body>404 Not Found</body></html>", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b'{"not": "weights"}'],
    ids=["html", "jpeg", "json"],
)
def test_non_checkpoint_file(tmp_path, content):
    path = tmp_path / "thing.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_state_dict(path)


def test_truncated_zip(tmp_path, weights):
    path = tmp_path / "cut.pt"
    torch.save(weights, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut short|truncated|corrupt"):
        read_state_dict(path)


def test_truncated_safetensors(tmp_path, weights):
    path = tmp_path / "cut.safetensors"
    save_file(weights, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="does not fit the file"):
        read_state_dict(path)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "note": "no weights here"}, path)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(path)


class _Payload:
    """Unpickling this runs ``os.system`` — which must never happen."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, weights, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": weights, "x": _Payload(str(marker))}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError) as info:
        read_state_dict(path)
    assert not marker.exists()
    assert any("system" in g for g in info.value.globals)
    assert "system" in str(info.value)


def test_raw_pickle_protocol_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    with pytest.raises(CheckpointError):
        read_state_dict(path)
    assert not marker.exists()


def test_safetensors_with_bad_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # no closing brace
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="header"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [-4], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]},
        {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]},
        {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]},
        "not an object",
    ],
    ids=["negative-dim", "float-dim", "negative-offset", "reversed-offsets", "unknown-dtype", "not-a-dict"],
)
def test_safetensors_with_invalid_entries(tmp_path, entry):
    import json

    path = tmp_path / "bad.safetensors"
    header = json.dumps({"x": entry}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    with pytest.raises(CheckpointError, match="'x'"):
        read_safetensors(path)
