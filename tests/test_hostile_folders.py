"""Hostile checkpoint folders: mistyped config values, bad normalisation, side files that are not files, links out.

Each case starts from one real open_clip hub layout (a tiny open_clip model
saved by open_clip's own ``save_config_for_hf``), changes one thing, and checks
that clipkit refuses it with a typed error naming the file, the key and the
value (never coercing ``"false"`` to ``True``, never treating a FIFO config as
absent, never reading a file a link leads to outside the folder). A Hugging
Face cache snapshot linking into its own ``blobs/`` still loads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import clipkit
from clipkit.errors import CheckpointError, ConfigurationError
from clipkit.spec import Provenance
from tests import open_clip_layout as ocl

_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 1},
        "text_cfg": {"context_length": 8, "vocab_size": ocl.VOCAB, "width": 32, "heads": 1, "layers": 1}}
CONFIG = "open_clip_config.json"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny open_clip hub layout, copied by each test."""
    return ocl.save_hub_layout(ocl.build(_CFG), _CFG, tmp_path_factory.mktemp("oc") / "m")


def _copy(layout: Path, where: Path, edit: Any = None) -> Path:
    target = shutil.copytree(layout, where)
    if edit is not None:
        config = json.loads((target / CONFIG).read_text())
        edit(config)
        (target / CONFIG).write_text(json.dumps(config))
    return target


def _set(path: str, value: Any) -> Any:
    def edit(config: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        node = config
        for name in parents:
            node = node.setdefault(name, {})
        node[key] = value

    return edit


MISTYPED = [
    ("model_cfg.quick_gelu", "false"),
    ("model_cfg.quick_gelu", 0),
    ("model_cfg.text_cfg.no_causal_mask", "false"),
    ("model_cfg.text_cfg.proj_bias", "true"),
    ("model_cfg.text_cfg.heads", True),
    ("model_cfg.text_cfg.heads", 1.0),
    ("model_cfg.text_cfg.mlp_ratio", "4"),
    ("model_cfg.vision_cfg.ls_init_value", "1e-5"),
    ("model_cfg.vision_cfg.no_ln_pre", 1),
    ("model_cfg.vision_cfg.norm_kwargs.eps", "1e-5"),
    ("model_cfg.vision_cfg.norm_kwargs.eps", True),
    ("model_cfg.text_cfg.act_kwargs.approximate", 0),
    ("model_cfg.text_cfg.pool_type", 1),
]


@pytest.mark.parametrize(("key", "value"), MISTYPED)
def test_a_config_value_of_the_wrong_json_type_is_refused_naming_file_key_and_value(
        layout: Path, tmp_path: Path, key: str, value: Any) -> None:
    directory = _copy(layout, tmp_path / "m", _set(key, value))
    with pytest.raises(ConfigurationError) as info:
        clipkit.inspect(str(directory))
    message = str(info.value)
    assert CONFIG in message and key in message and repr(value) in message


@pytest.mark.parametrize(("key", "value", "words"), [
    ("std", [1e-320] * 3, "at least 1e-06"),
    ("std", [0.5, 0.5, -0.5], "at least 1e-06"),
    ("mean", [float("nan")] * 3, "finite"),
    ("mean", [1e39] * 3, "float32"),
])
def test_a_normalisation_that_is_not_finite_or_too_small_is_refused(
        layout: Path, tmp_path: Path, key: str, value: list[float], words: str) -> None:
    directory = _copy(layout, tmp_path / "m", _set(f"preprocess_cfg.{key}", value))
    with pytest.raises(ConfigurationError, match=rf"{CONFIG}: preprocess_cfg\.{key}: .*{words}"):
        clipkit.inspect(str(directory))


def test_a_caller_given_std_is_checked_like_a_config_one(layout: Path) -> None:
    spec = clipkit.inspect(str(layout))
    with pytest.raises(ConfigurationError, match="image_std must be at least"):
        spec.with_values({"image_std": (1e-320,) * 3}, Provenance.caller())
    assert spec.with_values({"image_std": 0.5}, Provenance.caller()).image_std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "dangling link"])
def test_a_config_that_exists_but_is_not_a_regular_file_is_an_error_not_absent(
        layout: Path, tmp_path: Path, kind: str) -> None:
    directory = _copy(layout, tmp_path / "m")
    config = directory / CONFIG
    config.unlink()
    {"fifo": os.mkfifo, "folder": os.mkdir, "device": lambda p: os.symlink("/dev/zero", p),
     "dangling link": lambda p: os.symlink(tmp_path / "nowhere.json", p)}[kind](config)
    with pytest.raises(CheckpointError, match="open_clip_config.json"):
        clipkit.load(str(directory), device="cpu")


def test_a_transformers_config_that_is_a_fifo_is_an_error(layout: Path, tmp_path: Path) -> None:
    directory = _copy(layout, tmp_path / "hf")  # transformers' names: model.safetensors beside config.json
    (directory / CONFIG).unlink()
    (directory / "open_clip_model.safetensors").rename(directory / "model.safetensors")
    os.mkfifo(directory / "config.json")
    with pytest.raises(CheckpointError, match="config.json is a FIFO"):
        clipkit.load(str(directory), device="cpu")


def _outside(tmp_path: Path, layout: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(layout / "open_clip_model.safetensors", outside / "secret.safetensors")
    return outside


def test_open_clip_weights_linked_outside_the_folder_are_refused(layout: Path, tmp_path: Path) -> None:
    outside = _outside(tmp_path, layout)
    directory = _copy(layout, tmp_path / "m")
    (directory / "open_clip_model.safetensors").unlink()
    (directory / "open_clip_model.safetensors").symlink_to(outside / "secret.safetensors")
    with pytest.raises(CheckpointError, match=r"open_clip_model.safetensors.*leads to .*outside.*secret"):
        clipkit.load(str(directory), device="cpu")


@pytest.mark.parametrize("how", ["file link", "folder link"])
def test_a_shard_index_entry_leading_outside_the_folder_is_refused(layout: Path, tmp_path: Path, how: str) -> None:
    from safetensors.torch import load_file, save_file

    outside = _outside(tmp_path, layout)
    directory = tmp_path / "sharded"
    directory.mkdir()
    state = load_file(layout / "open_clip_model.safetensors")
    keys = sorted(state)
    save_file({k: state[k] for k in keys[1:]}, directory / "b.safetensors")
    save_file({keys[0]: state[keys[0]]}, outside / "a.safetensors")
    if how == "file link":
        (directory / "a.safetensors").symlink_to(outside / "a.safetensors")
        name = "a.safetensors"
    else:
        (directory / "sub").symlink_to(outside)
        name = "sub/a.safetensors"
    weight_map = {keys[0]: name, **{k: "b.safetensors" for k in keys[1:]}}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=rf"{name}.*model.safetensors.index.json.*outside"):
        clipkit.load(str(directory), device="cpu")


def test_a_hub_cache_snapshot_linking_into_its_own_blobs_loads(layout: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name in (CONFIG, "open_clip_model.safetensors"):
        shutil.copy(layout / name, repo / "blobs" / name.replace(".", "_"))
        (snapshot / name).symlink_to(Path("../../blobs") / name.replace(".", "_"))
    reference = clipkit.inspect(str(layout))
    assert clipkit.inspect(str(snapshot)) == reference
    other = tmp_path / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    shutil.move(repo / "blobs" / "open_clip_model_safetensors", other / "w")
    (snapshot / "open_clip_model.safetensors").unlink()
    (snapshot / "open_clip_model.safetensors").symlink_to(other / "w")
    with pytest.raises(CheckpointError, match="outside the checkpoint's folder"):
        clipkit.load(str(snapshot), device="cpu")


def test_many_zero_size_views_of_one_storage_are_refused_by_count(tmp_path: Path) -> None:
    import torch

    from clipkit.checkpoint import read_state_dict
    from clipkit.pickle_scan import object_limits

    base = torch.arange(16, dtype=torch.float32)
    path = tmp_path / "views.pt"
    torch.save({"w": base, "views": [base[:0] for _ in range(25_000)]}, path)  # no tensor bytes, 25k records
    limit = object_limits(path.stat().st_size)[0]
    with pytest.raises(CheckpointError, match=rf"builds over {limit} objects \(tensor records\)"):
        read_state_dict(path)
    torch.save({"w": base, "views": [base[:0] for _ in range(100)]}, path)
    assert torch.equal(read_state_dict(path)["w"], base)


def test_a_sidecar_field_of_the_wrong_type_is_refused_naming_the_sidecar(layout: Path, tmp_path: Path) -> None:
    from clipkit.builtin.sidecar import SIDECAR_FORMAT

    weights = Path(shutil.copy(layout / "open_clip_model.safetensors", tmp_path / "w.safetensors"))
    sidecar = tmp_path / "w.clipkit.json"
    sidecar.write_text(json.dumps({"format": SIDECAR_FORMAT, "family": "vit", "fields": {"quick_gelu": "false"}}))
    with pytest.raises(ConfigurationError, match=r"w\.clipkit\.json.*quick_gelu must be True or False, got 'false'"):
        clipkit.inspect(str(weights))
