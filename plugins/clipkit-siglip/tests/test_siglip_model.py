"""clipkit-siglip loads transformers' SiglipModel directories with the same numbers as ``transformers.SiglipModel``.

Every reference is a small ``SiglipModel`` with random weights, saved with its
tokenizer and image processor the way the Hub has SigLIP; clipkit loads the
directory through ``clipkit.load`` and must agree to 1e-5 on image and text
features and on both (sigmoid) logits.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import clipkit
import siglip_reference as ref
from clipkit.errors import AssumptionWarning, ConfigurationError, UnsupportedConfigError
from clipkit.spec import CONFIG, CONVENTION, SHAPES
from clipkit.testing import assert_outputs_close, dual_encoder_outputs, max_difference

pytestmark = pytest.mark.usefixtures("siglip_registered")
skimage_data = pytest.importorskip("skimage.data")

CONFIGS = {
    "base-like": dict(),
    "narrow-heads-gelu": dict(text_width=64, text_heads=4, text_mlp=100, vision_width=64, vision_heads=2,
                              vision_mlp=72, patch=4, resolution=16, context=8, act="gelu", eps=1e-5, seed=3),
    # 36px images in 8px patches: a 4x4 grid and a dropped remainder, as so400m-patch14-384 (27 patches of 14)
    "quick-gelu-one-layer-36px": dict(act="quick_gelu", layers=1, vision_heads=6, resolution=36, seed=5),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_saved_directory_matches_transformers(name, tmp_path):
    sizes = CONFIGS[name]
    hf = ref.make_siglip(**sizes)
    ref.save_checkpoint(hf, tmp_path / name)
    spec = clipkit.inspect(tmp_path / name)
    vision = hf.config.vision_config
    assert (spec.image_resolution, spec.vision_patch_size, spec.vision_width, spec.vision_heads) == (
        vision.image_size, vision.patch_size, vision.hidden_size, vision.num_attention_heads)
    assert (spec.context_length, spec.vocab_size, spec.text_heads, spec.vision_act) == (
        hf.config.text_config.max_position_embeddings, ref.VOCAB, hf.config.text_config.num_attention_heads,
        hf.config.vision_config.hidden_act)
    assert spec.provenance_of("vision_width").source == SHAPES
    assert {spec.provenance_of(f).source for f in ("text_heads", "vision_act", "image_mean", "interpolation")} == {CONFIG}

    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumptionWarning)  # config files settle everything the shapes cannot show
        model, _ = clipkit.load(tmp_path / name, device="cpu")
    resolution, context = vision.image_size, spec.context_length
    images, tokens = ref.images(resolution=resolution, seed=len(name)), ref.token_ids(context)
    assert_outputs_close(dual_encoder_outputs(model, images, tokens), ref.reference_outputs(hf, images, tokens))
    assert model.visual.input_resolution == resolution and model.context_length == context
    assert model.vocab_size == ref.VOCAB and model.score == "sigmoid" and model.logit_bias.item() == -3.0


def test_photos_and_texts_end_to_end_match_transformers_processor_and_model(tmp_path):
    hf = ref.make_siglip(seed=7)
    processor = ref.save_checkpoint(hf, tmp_path / "siglip")
    model, preprocess = clipkit.load(tmp_path / "siglip", device="cpu")
    tokenizer = clipkit.get_tokenizer(model)
    photos = [Image.open(f"{skimage_data.data_dir}/{name}") for name in ("chelsea.png", "rocket.jpg", "camera.png")]
    texts = ["a photo of a cat", "a rocket lifting off", "Ελληνικά 🐱", "the " * 30]
    inputs = processor(text=texts, images=photos, padding="max_length", max_length=16, truncation=True,
                       return_tensors="pt")
    pixels = torch.stack([preprocess(photo) for photo in photos])
    ids = tokenizer(texts)
    assert torch.equal(ids, inputs["input_ids"])
    torch.testing.assert_close(pixels, inputs["pixel_values"], rtol=0, atol=1e-5)
    with torch.no_grad():
        want = hf(**{k: v for k, v in inputs.items() if k != "attention_mask"}).logits_per_image
        got, _ = model(pixels, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bare_weights_warn_and_keywords_settle_the_guesses(tmp_path):
    hf = ref.make_siglip(seed=2)  # 32- and 48-wide towers with 2 and 3 heads: not SigLIP's 64-wide convention
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "siglip.safetensors"))
    images, tokens = ref.images(seed=1), ref.token_ids()
    want = ref.reference_outputs(hf, images, tokens)
    with pytest.warns(AssumptionWarning) as caught:
        guessed, _ = clipkit.load(tmp_path / "siglip.safetensors", device="cpu")
    assert {"text_heads", "vision_heads", "text_act", "image_mean"} <= set(caught[0].message.fields)
    assert clipkit.inspect(tmp_path / "siglip.safetensors").provenance_of("vision_heads").source == CONVENTION
    assert max_difference(dual_encoder_outputs(guessed, images, tokens), want) > 1e-3
    with pytest.warns(AssumptionWarning):  # the preprocessing and tokenizer are still unsettled
        model, _ = clipkit.load(tmp_path / "siglip.safetensors", device="cpu", text_heads=2, vision_heads=3)
    assert_outputs_close(dual_encoder_outputs(model, images, tokens), want)
    with pytest.raises(ConfigurationError, match="no tokenizer files beside its weights"):
        clipkit.get_tokenizer(model)


def test_older_pytorch_model_bin_with_position_ids_loads(tmp_path):
    hf = ref.make_siglip(seed=4)
    hf.save_pretrained(tmp_path / "new")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    state = dict(hf.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(16)[None]
    torch.save(state, legacy / "pytorch_model.bin")
    with pytest.warns(AssumptionWarning):  # no preprocessor_config.json
        model, _ = clipkit.load(legacy, device="cpu")
    images, tokens = ref.images(seed=2), ref.token_ids()
    assert_outputs_close(dual_encoder_outputs(model, images, tokens), ref.reference_outputs(hf, images, tokens))
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, strict=True)


def test_bfloat16_keeps_norms_and_logit_parameters_float32(tmp_path):
    hf = ref.make_siglip(seed=6)
    ref.save_checkpoint(hf, tmp_path / "siglip")
    model, _ = clipkit.load(tmp_path / "siglip", device="cpu", dtype=torch.bfloat16)
    assert model.vision_model.head.attention.in_proj_weight.dtype == torch.bfloat16
    assert model.logit_bias.dtype == model.vision_model.post_layernorm.weight.dtype == torch.float32
    images, tokens = ref.images(seed=3), ref.token_ids()
    got = dual_encoder_outputs(model, images.bfloat16(), tokens)
    want = ref.reference_outputs(hf, images, tokens)
    assert max_difference({k: v.float() for k, v in got.items()}, want) < 0.25


def test_siglip2_fixed_resolution_loads_and_its_gemma_tokenizer_is_refused(tmp_path):
    from transformers import GemmaTokenizer

    hf = ref.make_siglip(seed=8)
    hf.save_pretrained(tmp_path / "siglip2")
    GemmaTokenizer().save_pretrained(tmp_path / "siglip2")  # SigLIP 2's fixed-resolution releases ship Gemma's
    with pytest.warns(AssumptionWarning):
        model, _ = clipkit.load(tmp_path / "siglip2", device="cpu")
    assert model.clipkit_spec.tokenizer_class == "GemmaTokenizer"
    images, tokens = ref.images(seed=5), ref.token_ids()
    assert_outputs_close(dual_encoder_outputs(model, images, tokens), ref.reference_outputs(hf, images, tokens))
    with pytest.raises(UnsupportedConfigError, match=r"GemmaTokenizer .* spiece.model \(SiglipTokenizer\), which is missing") as caught:
        clipkit.get_tokenizer(tmp_path / "siglip2")
    assert caught.value.field == "tokenizer_class"


def test_siglip2_naflex_is_refused_naming_the_field(tmp_path):
    from transformers import Siglip2Config, Siglip2Model

    config = Siglip2Config(
        text_config=dict(vocab_size=ref.VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=None, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           patch_size=8, num_patches=16),
    )
    Siglip2Model(config).save_pretrained(tmp_path / "naflex")
    with pytest.raises(UnsupportedConfigError, match="SigLIP 2 NaFlex") as caught:
        clipkit.inspect(tmp_path / "naflex")
    assert caught.value.field == "model_type"


def test_vision_tower_without_pooling_head_is_refused(tmp_path):
    hf = ref.make_siglip(seed=9)
    config = hf.config
    config.vision_config.vision_use_head = False
    from transformers import SiglipModel

    SiglipModel(config).save_pretrained(tmp_path / "headless")
    with pytest.raises(UnsupportedConfigError, match="no attention-pooling head") as caught:
        clipkit.load(tmp_path / "headless", device="cpu")
    assert caught.value.field == "vision_config.vision_use_head"


def test_unsupported_activation_and_contradicting_config_are_refused(tmp_path):
    ref.make_siglip(act="relu", seed=1).save_pretrained(tmp_path / "relu")
    with pytest.raises(UnsupportedConfigError, match=r"text_config.hidden_act is 'relu'; clipkit-siglip runs") as caught:
        clipkit.inspect(tmp_path / "relu")
    assert caught.value.field == "text_config.hidden_act"
    ref.make_siglip(seed=1).save_pretrained(tmp_path / "size")
    config = json.loads((tmp_path / "size" / "config.json").read_text())
    config["vision_config"]["image_size"] = 64
    (tmp_path / "size" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError, match=r"image_size is 64, but the weights hold 4x4 positions of 8px patches, for 32 to 39px"):
        clipkit.inspect(tmp_path / "size")


def test_another_input_size_and_one_tower_match_transformers(tmp_path):
    hf = ref.make_siglip(seed=10)
    ref.save_checkpoint(hf, tmp_path / "siglip")
    full, _ = clipkit.load(tmp_path / "siglip", device="cpu")
    images, tokens = ref.images(resolution=48, seed=4), ref.token_ids()
    model, preprocess = clipkit.load(tmp_path / "siglip", device="cpu", image_resolution=48)
    assert model.visual.input_resolution == 48 and preprocess.resolution == 48
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=images, interpolate_pos_encoding=True).pooler_output
        torch.testing.assert_close(model.encode_image(images), want, rtol=1e-5, atol=1e-5)
    image_tower, _ = clipkit.load(tmp_path / "siglip", device="cpu", tower="image")
    text_tower, _ = clipkit.load(tmp_path / "siglip", device="cpu", tower="text")
    assert not any(key.startswith("text_model.") for key in image_tower.state_dict())
    with torch.no_grad():
        assert torch.equal(image_tower.encode_image(images[:, :, :32, :32]), full.encode_image(images[:, :, :32, :32]))
        assert torch.equal(text_tower.encode_text(tokens), full.encode_text(tokens))
    assert torch.equal(clipkit.get_tokenizer(text_tower)(["a cat"]), clipkit.get_tokenizer(full)(["a cat"]))
    from clipkit.errors import ResizeError

    with pytest.raises(ResizeError, match="reads the last position of a text padded to its full context"):
        clipkit.load(tmp_path / "siglip", device="cpu", context_length=8)


def test_config_values_of_the_wrong_type_are_typed_errors(tmp_path):
    from clipkit.errors import CheckpointError

    ref.save_checkpoint(ref.make_siglip(layers=1, seed=15), tmp_path / "siglip")

    def with_value(name, path, value):
        folder = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tmp_path / "siglip", folder)
        doc = json.loads((folder / name).read_text())
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        (folder / name).write_text(json.dumps(doc))
        return folder

    with pytest.raises(CheckpointError, match="text_config is -1, not an object"):
        clipkit.inspect(with_value("config.json", ["text_config"], -1))
    with pytest.raises(UnsupportedConfigError, match=r"image_processor.resample \[\] is not a PIL resampling code"):
        clipkit.inspect(with_value("processor_config.json", ["image_processor", "resample"], []))
    with pytest.raises(CheckpointError, match="tokenizer setting eos_token is 5, not a token's text"):
        clipkit.get_tokenizer(with_value("tokenizer_config.json", ["eos_token"], 5))
