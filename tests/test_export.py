"""Export: ONNX per tower (checked under onnxruntime), safetensors with its spec sidecar, transformers' CLIPModel.

Oracles: onnxruntime running the written graphs, ``clipkit.load`` of the
written files (with no ``AssumptionWarning``), and ``transformers.CLIPModel``.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from factories import TINY_RESNET, TINY_VIT, sample_images, sample_tokens, write_checkpoint

import clipkit
from clipkit import export
from clipkit.errors import AssumptionWarning, CheckpointError, ConfigurationError, ExportError


#: the random test files have no config beside them: guessed fields are expected here
pytestmark = pytest.mark.filterwarnings("ignore::clipkit.errors.AssumptionWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("export")
    out = {}
    for config in (TINY_VIT, TINY_RESNET):
        path = folder / f"{config.name}.pt"
        write_checkpoint(path, config, dtype=torch.float32, seed=7)
        out[config.family] = path
    return out


def _load(path, **kwargs):
    return clipkit.load(path, device="cpu", **kwargs)[0]


def _run_onnx(path, inputs: torch.Tensor):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {name: inputs.numpy()})[0]), session


# -- ONNX ---------------------------------------------------------------------------------------------------


def test_onnx_towers_of_a_vit_match_torch_at_any_batch(files, tmp_path):
    model = _load(files["vit"])
    written = export.to_onnx(model, tmp_path / "onnx")
    assert sorted(written) == ["image", "text"] and sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "image.onnx", "text.onnx"]
    images = sample_images(TINY_VIT, batch=5, seed=9)
    tokens = sample_tokens(TINY_VIT, batch=4, seed=9)
    got_image, session = _run_onnx(written["image"], images)
    got_text, _ = _run_onnx(written["text"], tokens)
    with torch.no_grad():
        assert (got_image - model.encode_image(images)).abs().max() <= 1e-4
        assert (got_text - model.encode_text(tokens)).abs().max() <= 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["logit_scale"]) == pytest.approx(model.logit_scale.item()) and meta["input_resolution"] == "32"
    assert session.get_inputs()[0].shape[0] == "batch"


def test_onnx_of_a_resnet_image_tower_loaded_alone(files, tmp_path):
    model = _load(files["resnet"], tower="image")
    written = export.to_onnx(model, tmp_path)
    assert list(written) == ["image"]
    images = sample_images(TINY_RESNET, batch=3, seed=2)
    got, _ = _run_onnx(written["image"], images)
    with torch.no_grad():
        assert (got - model.encode_image(images)).abs().max() <= 1e-4
    assert not model.training  # the exporter's mode switching leaves the caller's model alone


def test_onnx_export_that_fails_verification_leaves_nothing(files, tmp_path):
    model = _load(files["vit"], tower="text")
    with pytest.raises(ExportError, match="differs from the torch model"):
        export.to_onnx(model, tmp_path / "strict", atol=0.0)  # no two runtimes agree to the last bit
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_one_tower_to_onnx(files, tmp_path, capsys):
    from clipkit.cli import main

    out = tmp_path / "cli"
    assert main(["export", str(files["vit"]), str(out), "--format", "onnx", "--tower", "text"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "text.onnx")]
    assert [p.name for p in out.iterdir()] == ["text.onnx"]


# -- safetensors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "options"), [("vit", {"quick_gelu": False}), ("resnet", {"image_resolution": 96})])
def test_safetensors_reloads_with_nothing_guessed_and_equal_outputs(files, tmp_path, family, options):
    model = _load(files[family], **options)
    weights = export.to_safetensors(model, tmp_path / "model.safetensors")
    sidecar = json.loads((tmp_path / "model.clipkit.json").read_text())
    assert sidecar["family"] == family and set(sidecar["fields"]) == set(model.clipkit_spec.guessed_fields()) | (
        {"quick_gelu"} if "quick_gelu" in options else set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumptionWarning)
        reloaded, _ = clipkit.load(weights, device="cpu")
    assert reloaded.clipkit_spec == model.clipkit_spec
    config = TINY_VIT if family == "vit" else TINY_RESNET.with_(image_resolution=96)
    images, tokens = sample_images(config, seed=1), sample_tokens(config, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(images), model.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(reloaded.encode_text(tokens), model.encode_text(tokens), rtol=0, atol=0)


def test_a_sidecar_that_does_not_belong_is_refused(files, tmp_path):
    weights = export.to_safetensors(_load(files["vit"]), tmp_path / "m.safetensors")
    sidecar = tmp_path / "m.clipkit.json"
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "family": "resnet"}))
    with pytest.raises(ConfigurationError, match="belongs to other weights"):
        clipkit.load(weights, device="cpu")
    sidecar.write_text(json.dumps({**data, "fields": {"vision_pool": "avg", "no_such_field": 1}}))
    with pytest.raises(ConfigurationError, match="no_such_field"):
        clipkit.load(weights, device="cpu")
    sidecar.write_text("{half a file")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        clipkit.load(weights, device="cpu")


def test_a_model_the_shapes_would_misread_is_not_exported(files, tmp_path):
    model = _load(files["vit"], image_resolution=(32, 64))  # a 4x8 grid: its 33 positions do not say 4x8
    with pytest.raises(ExportError, match="would"):
        export.to_safetensors(model, tmp_path / "wide.safetensors")
    tower = _load(files["vit"], tower="image")
    with pytest.raises(ExportError, match="would not load back"):
        export.to_safetensors(tower, tmp_path / "tower.safetensors")
    assert list(tmp_path.iterdir()) == []


# -- transformers ------------------------------------------------------------------------------------------------


def test_transformers_export_loads_in_clipmodel_and_matches(files, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = _load(files["vit"], quick_gelu=False)
    folder = export.to_transformers(model, tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    reference = transformers.CLIPModel.from_pretrained(folder).eval()
    images, tokens = sample_images(TINY_VIT, batch=3, seed=4), sample_tokens(TINY_VIT, batch=3, seed=4)

    def features(output):  # transformers 5 returns an output object, 4.x a tensor
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    with torch.no_grad():
        torch.testing.assert_close(features(reference.get_image_features(pixel_values=images)),
                                   model.encode_image(images), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(features(reference.get_text_features(input_ids=tokens)),
                                   model.encode_text(tokens), rtol=1e-4, atol=1e-5)
    processor = transformers.CLIPImageProcessor.from_pretrained(folder)
    assert processor.crop_size == {"height": 32, "width": 32} and processor.size == {"shortest_edge": 32}
    # ... and clipkit reads the folder back through the clipkit-hf plugin
    reloaded = _load(folder)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(images), model.encode_image(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reloaded.encode_text(tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-6)


def test_a_resnet_has_no_transformers_layout(files, tmp_path):
    with pytest.raises(ExportError, match="ViT image tower only"):
        export.to_transformers(_load(files["resnet"]), tmp_path / "hf")
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())


def test_a_transformers_folder_loads_one_tower_or_at_another_size(files, tmp_path):
    model = _load(files["vit"])
    folder = export.to_transformers(model, tmp_path / "hf")
    images, tokens = sample_images(TINY_VIT, batch=2, seed=6), sample_tokens(TINY_VIT, batch=2, seed=6)
    image_tower, text_tower = _load(folder, tower="image"), _load(folder, tower="text")
    resized_here, resized_there = _load(files["vit"], image_resolution=48, context_length=20), _load(
        folder, image_resolution=48, context_length=20)
    big = sample_images(TINY_VIT.with_(image_resolution=48), batch=2, seed=6)
    long = sample_tokens(TINY_VIT.with_(context_length=20), batch=2, seed=6)
    with torch.no_grad():  # transposed projections: the same numbers up to the matmul kernel's rounding
        torch.testing.assert_close(image_tower.encode_image(images), model.encode_image(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(text_tower.encode_text(tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(resized_there.encode_image(big), resized_here.encode_image(big), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(resized_there.encode_text(long), resized_here.encode_text(long), rtol=1e-5, atol=1e-6)
