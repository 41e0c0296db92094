"""clipkit-hf loads transformers-format CLIP checkpoints with the same numbers as ``transformers.CLIPModel``.

Every reference is a small ``CLIPModel`` with random weights (LayerNorms and
biases perturbed too), saved the way transformers saves it; clipkit loads the
files through ``clipkit.load`` and must agree to 1e-5 on image and text
features and on both logits.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import clipkit
import hf_reference as ref
from clipkit.errors import ConfigurationError, StateDictError
from clipkit.loader import detect_architecture
from clipkit.plugins import PluginRegistry
from clipkit.testing import assert_outputs_close, dual_encoder_outputs, max_difference
from clipkit_hf import HFCLIPSpec, hf_to_openai, infer_spec

pytestmark = pytest.mark.usefixtures("hf_registered")


def _spec(**changes):
    fields = dict(
        image_resolution=32, embed_dim=32, context_length=16, vocab_size=100, text_width=64, text_layers=2,
        text_heads=2, quick_gelu=True, vision_width=64, vision_layers=2, vision_heads=4, vision_patch_size=8,
    )
    return HFCLIPSpec(**{**fields, **changes})


ACTIVATIONS = {
    "quick_gelu": (("quick_gelu", "quick_gelu"), dict(quick_gelu=True)),
    "gelu": (("gelu", "gelu"), dict(quick_gelu=False)),
    "gelu-text-quick-gelu-vision": (("gelu", "quick_gelu"), dict(quick_gelu=False, vision_quick_gelu=True)),
}


@pytest.mark.parametrize("variant", list(ACTIVATIONS))
def test_saved_directory_matches_transformers(variant, tmp_path):
    (text_act, vision_act), spec_fields = ACTIVATIONS[variant]
    hf = ref.make_clip(text_act=text_act, vision_act=vision_act, seed=len(variant))
    hf.save_pretrained(tmp_path / "clip")
    assert (tmp_path / "clip" / "model.safetensors").is_file()

    assert clipkit.inspect(tmp_path / "clip") == _spec(**spec_fields)
    model, preprocess = clipkit.load(tmp_path / "clip", device="cpu")
    images, tokens = ref.images(), ref.tokens()
    want = ref.reference_outputs(hf, images, tokens)
    assert_outputs_close(dual_encoder_outputs(model, images, tokens), want)
    assert model.visual.input_resolution == 32 and model.context_length == 16 and model.vocab_size == 100

    # the activation read from config.json is what makes the numbers agree
    flipped = dict(quick_gelu=not spec_fields["quick_gelu"])
    wrong, _ = clipkit.load(tmp_path / "clip", device="cpu", **flipped)
    assert max_difference(dual_encoder_outputs(wrong, images, tokens), want) > 1e-3


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_single_file_without_config_matches_transformers(suffix, tmp_path):
    # no config.json: heads follow the 64-wide convention and the activation is QuickGELU, transformers' default
    hf = ref.make_clip(text_width=64, vision_width=128, text_heads=1, vision_heads=2, seed=11)
    path = tmp_path / f"clip{suffix}"
    state = {key: value.contiguous() for key, value in hf.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)

    assert clipkit.inspect(path) == _spec(text_heads=1, vision_width=128, vision_heads=2)
    model, _ = clipkit.load(path, device="cpu")
    images, tokens = ref.images(seed=3), ref.tokens()
    assert_outputs_close(dual_encoder_outputs(model, images, tokens), ref.reference_outputs(hf, images, tokens))


def test_weights_file_reads_the_config_beside_it(tmp_path):
    hf = ref.make_clip(text_act="gelu", vision_act="gelu", seed=5)
    hf.save_pretrained(tmp_path / "clip")
    assert clipkit.inspect(tmp_path / "clip" / "model.safetensors") == _spec(quick_gelu=False)

    # a transformers 4.x style directory: config.json and pytorch_model.bin, with the old position_ids buffers
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(tmp_path / "clip" / "config.json", legacy / "config.json")
    state = dict(hf.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    torch.save(state, legacy / "pytorch_model.bin")
    model, _ = clipkit.load(legacy, device="cpu")
    images, tokens = ref.images(seed=4), ref.tokens()
    assert_outputs_close(dual_encoder_outputs(model, images, tokens), ref.reference_outputs(hf, images, tokens))


def test_config_supplies_heads_and_layer_norm_epsilon(tmp_path):
    hf = ref.make_clip(text_heads=4, vision_heads=1, eps=1e-3, seed=9)
    hf.save_pretrained(tmp_path / "clip")
    assert clipkit.inspect(tmp_path / "clip") == _spec(text_heads=4, vision_heads=1, layer_norm_eps=1e-3,
                                                       text_norm_eps=1e-3, vision_norm_eps=1e-3)
    model, _ = clipkit.load(tmp_path / "clip", device="cpu")
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-3}
    images, tokens = ref.images(seed=8), ref.tokens()
    assert_outputs_close(dual_encoder_outputs(model, images, tokens), ref.reference_outputs(hf, images, tokens))


def test_hf_to_openai_gives_the_builtin_vit_layout():
    hf = ref.make_clip(seed=2)
    converted = hf_to_openai(hf.state_dict())
    builtins = PluginRegistry(entry_points=False)
    spec = detect_architecture(converted, registry=builtins)
    assert spec == clipkit.ViTSpec(  # the built-in detector assumes 64-wide heads
        image_resolution=32, embed_dim=32, context_length=16, vocab_size=100, text_width=64, text_layers=2,
        text_heads=1, vision_width=64, vision_layers=2, vision_heads=1, vision_patch_size=8,
    )
    assert converted["visual.proj"].shape == (64, 32) and converted["text_projection"].shape == (64, 32)
    q, k, v = (hf.state_dict()[f"vision_model.encoder.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    torch.testing.assert_close(converted["visual.transformer.resblocks.1.attn.in_proj_weight"], torch.cat([q, k, v]))
    assert not [key for key in converted if "position_ids" in key or key.startswith(("text_model.", "vision_model."))]


def test_model_state_dict_is_openai_layout_and_loads_back(tmp_path):
    hf = ref.make_clip(seed=4)
    hf.save_pretrained(tmp_path / "clip")
    model, _ = clipkit.load(tmp_path / "clip", device="cpu")
    own = model.state_dict()
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in own and "visual_projection.weight" not in own
    model.load_state_dict({k: v.clone() for k, v in own.items()}, strict=True)  # the pre-hook leaves this layout alone


def test_detection_reads_only_shapes():
    hf = ref.make_clip(seed=1)
    meta = {key: torch.empty(value.shape, device="meta") for key, value in hf.state_dict().items()}
    assert infer_spec(meta) == _spec(text_heads=1, vision_heads=1)  # without config.json: 64-wide heads


def test_unsupported_activation_is_a_configuration_error(tmp_path):
    ref.make_clip(vision_act="gelu_new").save_pretrained(tmp_path / "clip")
    with pytest.raises(ConfigurationError, match=r"vision_config.hidden_act is 'gelu_new'.*'quick_gelu' and 'gelu'"):
        clipkit.load(tmp_path / "clip", device="cpu")


def test_end_of_text_that_is_not_the_highest_id_is_refused(tmp_path):
    ref.make_clip(eos_token_id=50).save_pretrained(tmp_path / "clip")
    with pytest.raises(ConfigurationError, match="eos_token_id is 50, not the highest token id 99"):
        clipkit.inspect(tmp_path / "clip")


def test_mlp_that_is_not_four_times_wider_is_refused(tmp_path):
    ref.make_clip(intermediate=96).save_pretrained(tmp_path / "clip")
    with pytest.raises(StateDictError, match=r"text_model.encoder.layers.0.mlp.fc1.weight has shape \(96, 64\)"):
        clipkit.load(tmp_path / "clip", device="cpu")


def test_missing_and_stray_tensors_are_named(tmp_path):
    state = dict(ref.make_clip(seed=6).state_dict())
    del state["logit_scale"]
    state["text_model.encoder.layers.0.adapter.weight"] = torch.zeros(4, 4)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    with pytest.raises(StateDictError) as info:
        clipkit.load(tmp_path / "clip.safetensors", device="cpu")
    assert info.value.missing == ("logit_scale",)
    assert info.value.unexpected == ("text_model.encoder.layers.0.adapter.weight",)  # named as in the file

    del state["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    with pytest.raises(StateDictError, match="vision_model.encoder.layers.1.self_attn.k_proj.weight") as info:
        clipkit.inspect(tmp_path / "clip.safetensors")
    assert info.value.missing == ("vision_model.encoder.layers.1.self_attn.k_proj.weight",)


def test_unrelated_config_json_is_ignored(tmp_path):
    hf = ref.make_clip(text_act="gelu", vision_act="gelu", seed=3)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_act": "gelu"}))
    assert clipkit.inspect(tmp_path / "weights.safetensors").quick_gelu is True
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(clipkit.errors.CheckpointError, match="config.json is not valid JSON"):
        clipkit.inspect(tmp_path / "weights.safetensors")


def test_registered_through_its_entry_point():
    try:
        dist = importlib.metadata.distribution("clipkit-hf")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("clipkit-hf is not installed (pip install -e plugins/clipkit-hf); its entry point cannot be checked")
    (entry,) = [ep for ep in dist.entry_points if ep.group == "clipkit"]
    assert (entry.name, entry.value) == ("hf", "clipkit_hf.plugin")
    infos = {info.name: info for info in PluginRegistry().infos()}
    assert infos["hf"].origin == f"clipkit-hf {dist.version}"
    assert infos["hf"].hooks == ("adapt_state_dict", "build_model", "detect_architecture", "make_transform",
                                 "select_tower")


PROCESSORS = {
    "clip-defaults": {},
    "resize-larger-bilinear": {"size": {"shortest_edge": 40}, "resample": 2, "image_mean": [0.5, 0.5, 0.5],
                               "image_std": [0.5, 0.5, 0.5]},
}


@pytest.mark.parametrize("variant", list(PROCESSORS))
def test_preprocessor_config_drives_the_transform(variant, tmp_path):
    """``preprocessor_config.json`` (mean, std, resample, size, crop_size) gives CLIPImageProcessor's pixels."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(**{"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32},
                                      **PROCESSORS[variant]})
    ref.make_clip(seed=3).save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    spec = clipkit.inspect(tmp_path / "clip")
    assert spec.provenance_of("image_mean").detail.startswith("preprocessor_config.json")
    _, preprocess = clipkit.load(tmp_path / "clip", device="cpu")
    for photo in ("chelsea", "rocket", "camera", "coffee"):
        image = Image.fromarray(getattr(skimage_data, photo)())
        want = torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"][0])
        # transformers' PIL round trip rounds a few resized pixels the other way: at most one 8-bit level
        level = (1 / 255) / min(processor.image_std) + 1e-6
        got = preprocess(image)
        assert got.shape == want.shape and (got - want).abs().max() <= level, photo
        assert (got - want).abs().mean() < 1e-3, photo


def test_every_field_has_a_provenance_with_and_without_config(tmp_path):
    hf = ref.make_clip(seed=4)
    hf.save_pretrained(tmp_path / "clip")
    spec = clipkit.inspect(tmp_path / "clip")
    assert all(spec.provenance_of(name).source != "unrecorded" for name in spec.to_dict())
    assert spec.provenance_of("vision_heads").detail == "config.json: vision_config.num_attention_heads"
    save_file(hf.state_dict(), tmp_path / "bare.safetensors")
    with pytest.warns(clipkit.errors.AssumptionWarning, match="vision_heads"):
        clipkit.load(tmp_path / "bare.safetensors", device="cpu")
