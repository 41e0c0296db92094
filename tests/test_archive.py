"""Reading TorchScript archives as data (``clipkit.archive``): the weights, never the code."""

from __future__ import annotations

import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import clipkit
import factories
import jit_fixtures
from clipkit import archive
from clipkit.checkpoint import read_state_dict
from clipkit.errors import CheckpointError, ClipkitError, UnsafeCheckpointError

CONFIGS = [factories.TINY_VIT, factories.TINY_RESNET]


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, dict[str, torch.Tensor]]]:
    """name -> (release-like fp16 archive, its CUDA twin, the state dict that was traced)."""
    return jit_fixtures.make_releases(tmp_path_factory.mktemp("releases"), CONFIGS)


def _torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    with jit_fixtures.quiet_torchscript():
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def _assert_same_state(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype, key
        assert ours[key].shape == value.shape, key
        assert torch.equal(ours[key], value), key


# -- the state dict ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [c.name for c in CONFIGS])
def test_state_dict_equals_the_scripted_modules_own(releases, name: str) -> None:
    path, _, _ = releases[name]
    _assert_same_state(archive.read_torchscript_state_dict(path), _torchscript_state_dict(path))


@pytest.mark.parametrize("name", [c.name for c in CONFIGS])
def test_cuda_twin_reads_without_a_gpu_and_holds_the_traced_weights(releases, name: str) -> None:
    _, twin, traced = releases[name]
    state = archive.read_torchscript_state_dict(twin)
    _assert_same_state(state, _torchscript_state_dict(twin))
    weights, metadata = archive.split_metadata(state)
    _assert_same_state(weights, {k: state[k] for k in state if k in traced})
    assert set(weights) == set(traced)
    for key, value in traced.items():
        assert weights[key].dtype == value.dtype and torch.equal(weights[key], value), key
    config = factories.TINY_CONFIGS[name]
    assert metadata == {
        "input_resolution": config.image_resolution,
        "context_length": config.context_length,
        "vocab_size": config.vocab_size,
    }


def test_nested_module_names_follow_the_module_tree(releases) -> None:
    vit = archive.read_torchscript_state_dict(releases["tiny-vit"][0])
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in vit
    assert "visual.transformer.resblocks.0.mlp.c_fc.weight" in vit  # an nn.Sequential child by name
    assert "transformer.resblocks.1.attn.out_proj.bias" in vit  # a ModuleList/Sequential child by index
    resnet = archive.read_torchscript_state_dict(releases["tiny-resnet"][0])
    assert "visual.layer2.0.downsample.0.weight" in resnet
    assert resnet["visual.layer1.0.bn1.num_batches_tracked"].dtype == torch.int64
    assert not any(key.endswith("training") for key in (*vit, *resnet))


def test_archive_record_names_the_root_class_and_its_plain_attributes(releases) -> None:
    record = archive.read_torchscript_archive(releases["tiny-vit"][0])
    assert record.root_class.startswith("__torch__.") and record.root_class.endswith("CLIP")
    assert record.attributes["training"] is False


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _storage_bytes(tensor: torch.Tensor) -> bytes:
    return torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy().tobytes()


@pytest.mark.parametrize("which", [0, 1], ids=["torch-written", "rezipped-twin"])
def test_stored_tensors_are_mapped_from_the_file_not_copied(releases, which: int) -> None:
    path = releases["tiny-vit"][which]
    state = archive.read_torchscript_state_dict(path)
    with zipfile.ZipFile(path) as zf:
        entries = [(_data_offset(path, i), zf.read(i.filename)) for i in zf.infolist() if "/data/" in i.filename]
    # each tensor's memory sits at its zip entry's file offset inside one mapping of the whole file
    bases = set()
    for key in ("visual.conv1.weight", "token_embedding.weight", "logit_scale", "visual.ln_pre.bias"):
        raw = _storage_bytes(state[key])
        offset = next(offset for offset, data in entries if data == raw)
        bases.add(state[key].untyped_storage().data_ptr() - offset)
    assert len(bases) == 1
    maps = Path("/proc/self/maps")
    if maps.exists():  # and that buffer is a mapping of the file itself, not a copy read into memory
        assert str(path.resolve()) in maps.read_text()


def test_compressed_entries_are_read_into_memory_with_the_same_values(releases, tmp_path: Path) -> None:
    path = releases["tiny-resnet"][0]
    squeezed = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(squeezed, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    _assert_same_state(archive.read_torchscript_state_dict(squeezed), archive.read_torchscript_state_dict(path))


# -- recognising archives ---------------------------------------------------------------------------------------


def test_torchscript_archives_are_told_from_other_files(releases, tmp_path: Path) -> None:
    state_dict_zip = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, state_dict_zip)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    assert archive.is_torchscript_archive(releases["tiny-vit"][0])
    assert archive.is_torchscript_archive(releases["tiny-vit"][1])
    assert not archive.is_torchscript_archive(state_dict_zip)
    assert not archive.is_torchscript_archive(text)
    assert not archive.is_torchscript_archive(tmp_path / "missing.pt")


def test_a_damaged_zip_is_reported_as_such(releases, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(releases["tiny-vit"][0].read_bytes()[:5000])
    with pytest.raises(zipfile.BadZipFile):
        archive.is_torchscript_archive(cut)
    with pytest.raises(CheckpointError, match="fetch it again"):
        archive.read_torchscript_state_dict(cut)


def test_a_plain_state_dict_zip_is_not_read_as_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a TorchScript archive"):
        archive.read_torchscript_state_dict(path)


def _rewrite(source: Path, destination: Path, change) -> Path:
    with zipfile.ZipFile(source) as zf:
        entries = [(name, zf.read(name)) for name in zf.namelist()]
    return jit_fixtures.write_zip(destination, [e for e in (change(n, d) for n, d in entries) if e is not None])


def test_missing_tensor_data_is_a_checkpoint_error(releases, tmp_path: Path) -> None:
    damaged = _rewrite(
        releases["tiny-vit"][0], tmp_path / "no-data.pt", lambda n, d: None if n.endswith("/data/3") else (n, d)
    )
    with pytest.raises(CheckpointError, match="does not contain"):
        archive.read_torchscript_state_dict(damaged)


def test_truncated_tensor_data_is_a_checkpoint_error(releases, tmp_path: Path) -> None:
    damaged = _rewrite(
        releases["tiny-vit"][0], tmp_path / "short.pt", lambda n, d: (n, d[:-2]) if n.endswith("/data/1") else (n, d)
    )
    with pytest.raises(CheckpointError, match="truncated"):
        archive.read_torchscript_state_dict(damaged)


def test_an_unreadable_data_pickle_says_what_to_do(releases, tmp_path: Path) -> None:
    def halve_data_pkl(name: str, data: bytes) -> tuple[str, bytes]:
        return (name, data[: len(data) // 2]) if name.endswith("data.pkl") else (name, data)

    damaged = _rewrite(releases["tiny-vit"][0], tmp_path / "garbled.pt", halve_data_pkl)
    with pytest.raises(CheckpointError, match="could not be read as data.*jit=True") as caught:
        archive.read_torchscript_state_dict(damaged)
    assert not isinstance(caught.value, UnsafeCheckpointError)


# -- no code runs ----------------------------------------------------------------------------------------------


def test_reading_weights_does_not_run_the_archives_setstate(tmp_path: Path) -> None:
    path = jit_fixtures.make_setstate_archive(tmp_path / "marked.pt")
    before = jit_fixtures.TRACE["count"]
    state = archive.read_torchscript_state_dict(path)
    assert jit_fixtures.TRACE["count"] == before
    _assert_same_state(read_state_dict(path), state)  # the checkpoint reader clipkit.load uses
    with pytest.raises(ClipkitError):  # not a CLIP model: no plugin claims it, and still nothing ran
        clipkit.load(path, jit=False, device="cpu")
    assert jit_fixtures.TRACE["count"] == before
    # the control: TorchScript itself runs the archive's __setstate__, which leaves the trace
    reference = _torchscript_state_dict(path)
    assert jit_fixtures.TRACE["count"] == before + 1
    _assert_same_state(state, reference)


def test_a_module_whose_weights_hide_behind_custom_state_is_refused(tmp_path: Path) -> None:
    path = jit_fixtures.make_opaque_state_archive(tmp_path / "opaque.pt")
    with pytest.raises(CheckpointError, match="custom __getstate__.*jit=True"):
        archive.read_torchscript_state_dict(path)


PAYLOADS = {
    "exec": lambda marker: jit_fixtures.payload_exec(f"open({str(marker)!r}, 'w').close()"),
    "stack_global": lambda marker: jit_fixtures.payload_stack_global("os", "system", f"touch {marker}"),
    "nested": lambda marker: jit_fixtures.payload_nested("builtins", "eval", f"open({str(marker)!r}, 'w')"),
}
REFUSED = {"exec": "builtins.exec", "stack_global": "os.system", "nested": "builtins.eval"}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_a_malicious_data_pickle_is_refused_and_does_not_run(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = jit_fixtures.make_malicious_archive(tmp_path / "evil.pt", PAYLOADS[kind](marker))
    assert archive.is_torchscript_archive(path)
    with pytest.raises(UnsafeCheckpointError) as caught:
        archive.read_torchscript_state_dict(path)
    assert caught.value.globals == (REFUSED[kind],)
    assert REFUSED[kind] in str(caught.value)
    assert not marker.exists()


def test_the_malicious_payload_is_live(tmp_path: Path) -> None:
    """The control for the test above: an ordinary unpickler does run the same payload."""
    marker = tmp_path / "pwned"
    pickle.loads(PAYLOADS["exec"](marker))
    assert marker.exists()


def test_every_refused_global_is_listed(tmp_path: Path) -> None:
    payload = (
        b"\x80\x02(cos\nsystem\n"
        + b"cbuiltins\neval\n"
        + b"csubprocess\nPopen\nl."
    )
    path = jit_fixtures.make_malicious_archive(tmp_path / "evil.pt", payload)
    with pytest.raises(UnsafeCheckpointError) as caught:
        archive.read_torchscript_state_dict(path)
    assert caught.value.globals == ("builtins.eval", "os.system", "subprocess.Popen")


# -- through clipkit.load --------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_jit_false_from_an_archive_matches_the_reference_model(releases, config: factories.CLIPConfig) -> None:
    _, twin, traced = releases[config.name]
    model, preprocess = clipkit.load(twin, jit=False, device="cpu")
    reference = factories.reference_model(traced)
    images, tokens = factories.sample_images(config), factories.sample_tokens(config)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens), rtol=1e-5, atol=1e-5)
    assert not isinstance(model, torch.jit.ScriptModule)
    assert model.visual.input_resolution == config.image_resolution


def test_jit_false_never_touches_torchscript(releases, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("the jit=False path called torch.jit")

    for name in ("load", "trace", "trace_module", "script"):
        monkeypatch.setattr(torch.jit, name, forbidden)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clipkit.load(releases["tiny-vit"][1], jit=False, device="cpu")
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "torch.jit" in m or "TorchScript" in m or "torch.export" in m], messages


def test_a_module_that_contains_itself_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = jit_fixtures.make_malicious_archive(tmp_path / "cycle.pt", jit_fixtures.payload_cycle())
    with pytest.raises(CheckpointError, match="contains itself"):
        archive.read_torchscript_state_dict(path)
