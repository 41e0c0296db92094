"""Export outputs on disk: unwritable places are typed errors, existing outputs are kept unless replaced, atomically.

Also the spec sidecar inside TorchScript archives: a plain (``jit=False``)
reload of an exported archive is the exported model, nothing assumed.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile

import pytest
import torch
from factories import TINY_VIT, sample_images, sample_tokens, write_checkpoint

import clipkit
from clipkit import export
from clipkit.errors import AssumptionWarning, ExportError

#: the random test file has no config beside it: guessed fields are expected when it is loaded
pytestmark = pytest.mark.filterwarnings("ignore::clipkit.errors.AssumptionWarning")

#: format -> (the output to name, the entries the export writes into its folder)
OUTPUTS = {
    "safetensors": ("m.safetensors", ["m.clipkit.json", "m.safetensors"]),
    "torchscript": ("m.pt", ["m.pt"]),
    "onnx": ("m", ["image.onnx", "text.onnx"]),
    "transformers": ("m", ["config.json", "model.safetensors", "preprocessor_config.json"]),
}


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("export-outputs") / "vit.pt"
    write_checkpoint(path, TINY_VIT, dtype=torch.float32, seed=3)
    return path, clipkit.load(path, device="cpu")[0]


def _export(fmt: str, model, out, **kwargs):
    return getattr(export, f"to_{fmt}")(model, out, **kwargs)


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(capsys, *args: str) -> tuple[int, str]:
    """``clipkit export ARGS`` run in this process: its exit status and what it printed on stderr."""
    from clipkit.cli import main

    capsys.readouterr()
    status = main(["export", *args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("fmt", sorted(OUTPUTS))
def test_an_output_that_cannot_be_created_is_a_one_line_error_and_leaves_nothing(vit, tmp_path, capsys, fmt):
    (tmp_path / "afile").write_text("hi")
    out = tmp_path / "afile" / "sub" / OUTPUTS[fmt][0]
    with pytest.raises(ExportError, match=re.escape(str(tmp_path / "afile" / "sub"))):
        _export(fmt, vit[1], out)
    assert _snapshot(tmp_path) == {"afile": b"hi"}
    if fmt == "safetensors":  # and the command line says it in one line, exit status 2
        status, err = _cli(capsys, str(vit[0]), str(out), "--format", fmt)
        assert status == 2 and err.startswith(f"clipkit: error: cannot create the folder {out.parent}")
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", sorted(OUTPUTS))
def test_an_existing_output_is_refused_unless_replaced_and_then_replaced_whole(vit, tmp_path, fmt):
    name, written = OUTPUTS[fmt]
    out = tmp_path / name
    if out.suffix:  # a file format: the file itself, or only its sidecar, is there
        (tmp_path / written[0]).write_text("user data")
        expected = str(tmp_path / written[0])
    else:  # a folder format: a folder holding the user's files
        out.mkdir()
        (out / "user.txt").write_text("keep")
        (out / written[0]).write_text("old")
        expected = str(out)
    before = _snapshot(tmp_path)
    with pytest.raises(ExportError, match=re.escape(expected) + ".*overwrite=True"):
        _export(fmt, vit[1], out)
    assert _snapshot(tmp_path) == before
    _export(fmt, vit[1], out, overwrite=True)
    folder = tmp_path if out.suffix else out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written if out.suffix else [name])  # no leftovers
    assert sorted(p.name for p in folder.iterdir()) == written  # the old folder is replaced, not mixed into
    assert all(b"user data" != (folder / n).read_bytes() and (folder / n).stat().st_size > 100 for n in written)


def test_an_empty_folder_is_exported_into(vit, tmp_path):
    (tmp_path / "empty").mkdir()
    export.to_transformers(vit[1], tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == OUTPUTS["transformers"][1]


def test_a_failed_replacement_leaves_the_old_output_intact(vit, tmp_path):
    out = tmp_path / "graphs"
    export.to_onnx(vit[1], out, tower="text")
    before = _snapshot(tmp_path)
    with pytest.raises(ExportError, match="differs from the torch model"):
        export.to_onnx(vit[1], out, atol=0.0, overwrite=True)  # no two runtimes agree to the last bit
    assert _snapshot(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["graphs"]


def test_the_command_line_refuses_an_existing_output_and_replaces_it_with_force(vit, tmp_path, capsys):
    out = tmp_path / "precious.safetensors"
    out.write_text("user data")
    status, err = _cli(capsys, str(vit[0]), str(out), "--format", "safetensors")
    assert status == 2 and out.read_text() == "user data"
    assert err == f"clipkit: error: {out} already exists; pass overwrite=True (--force) to replace it\n"
    assert _cli(capsys, str(vit[0]), str(out), "--format", "safetensors", "--overwrite") == (0, "")
    assert clipkit.inspect(out) == vit[1].clipkit_spec


# -- the spec sidecar inside TorchScript archives ------------------------------------------------------------


def test_a_torchscript_export_reloads_without_jit_as_the_same_model(vit, tmp_path):
    settings = {"quick_gelu": False, "image_mean": (0.5,) * 3, "image_std": (0.5,) * 3,
                "interpolation": "bilinear", "resize_mode": "squash"}
    model, _ = clipkit.load(vit[0], device="cpu", **settings)
    archive = export.to_torchscript(model, tmp_path / "gelu.pt")
    with zipfile.ZipFile(archive) as zf:
        (entry,) = [n for n in zf.namelist() if n.endswith("/extra/clipkit.json")]
        assert json.loads(zf.read(entry))["fields"]["quick_gelu"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumptionWarning)
        reloaded, _ = clipkit.load(archive, device="cpu")
    spec = reloaded.clipkit_spec
    assert spec == model.clipkit_spec and spec.provenance_of("quick_gelu").source == "config"
    assert entry in spec.provenance_of("resize_mode").detail
    images, tokens = sample_images(TINY_VIT, seed=1), sample_tokens(TINY_VIT, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(images), model.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(reloaded.encode_text(tokens), model.encode_text(tokens), rtol=0, atol=0)
    scripted, _ = clipkit.load(archive, device="cpu", jit=True)  # the archive still runs as a release does
    with torch.no_grad():
        torch.testing.assert_close(scripted.encode_text(tokens), model.encode_text(tokens))
