"""clipkit's CLIP modules compute what the references compute, from the same official-layout weights.

Each model is built the way the loader builds it: detect the spec from the
fp16 state dict, build on the meta device, ``load_state_dict(strict=True,
assign=True)``, cast. The oracle is open_clip's
``build_model_from_openai_state_dict`` on a copy of the same dict (and OpenAI's
own ``clip.model.build_model`` for the small models), compared in float32 on
CPU to 1e-5.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import clipkit
from clipkit.builtin import resnet, vit
from clipkit.errors import ConfigurationError
from clipkit.nn import CLIP, QuickGELU, cast_model
from factories import (
    OFFICIAL_CONFIGS,
    TINY_RESNET,
    TINY_VIT,
    CLIPConfig,
    make_state_dict,
    reference_model,
    sample_images,
    sample_tokens,
    write_checkpoint,
)
from oracles import openai_clip

TOL = dict(rtol=1e-5, atol=1e-5)
CASES: dict[str, tuple[CLIPConfig, int]] = {  # config, batch size
    "tiny-vit": (TINY_VIT, 3),
    "tiny-resnet": (TINY_RESNET, 3),
    "RN50": (OFFICIAL_CONFIGS["RN50"], 2),
    "ViT-B/32": (OFFICIAL_CONFIGS["ViT-B/32"], 2),
}
CUSTOM_TEXT_VIT = TINY_VIT.with_(name="vit-ctx24", context_length=24, vocab_size=777, text_width=96, text_layers=3)
CUSTOM_TEXT_RESNET = TINY_RESNET.with_(
    name="resnet-ctx40", context_length=40, vocab_size=3000, text_width=128, text_layers=1, image_resolution=96
)


def build_ours(state_dict: dict[str, torch.Tensor], *, quick_gelu: bool = True, dtype=torch.float32) -> CLIP:
    """The loader's steps through the plugins: detect, build on meta, load by assignment, cast."""
    claims = [p for p in (resnet, vit) if p.detect_architecture(state_dict=state_dict) is not None]
    assert len(claims) == 1
    plugin = claims[0]
    spec = attrs.evolve(plugin.detect_architecture(state_dict=state_dict), quick_gelu=quick_gelu)
    with torch.device("meta"):
        model = plugin.build_model(spec=spec)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return cast_model(model, dtype).eval()


@torch.no_grad()
def outputs(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, *, open_clip: bool) -> SimpleNamespace:
    """encode_image, encode_text and both logits.

    Ours: the logits come from our ``forward``. open_clip's ``forward`` returns
    normalised features and ``logit_scale.exp()``; its logits are CLIP's formula
    on its own features (computed once, the big models are slow on CPU).
    """
    image, text = model.encode_image(images), model.encode_text(tokens)
    if open_clip:
        per_image = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        per_text = per_image.t()
    else:
        per_image, per_text = model(images, tokens)
    return SimpleNamespace(image=image, text=text, per_image=per_image, per_text=per_text)


def assert_same_outputs(ours: SimpleNamespace, ref: SimpleNamespace, **tol) -> None:
    tol = tol or TOL
    assert_close(ours.image, ref.image, **tol)
    assert_close(ours.text, ref.text, **tol)
    assert_close(ours.per_image, ref.per_image, **tol)
    assert_close(ours.per_text, ref.per_text, **tol)


@pytest.fixture(scope="module", params=list(CASES))
def case(request) -> SimpleNamespace:
    config, batch = CASES[request.param]
    state_dict = make_state_dict(config, seed=1)
    images, tokens = sample_images(config, batch, seed=2), sample_tokens(config, batch, seed=3)
    ours = build_ours(state_dict)
    ref = reference_model(state_dict, quick_gelu=True)
    return SimpleNamespace(
        config=config,
        state_dict=state_dict,
        model=ours,
        images=images,
        tokens=tokens,
        ours=outputs(ours, images, tokens, open_clip=False),
        ref=outputs(ref, images, tokens, open_clip=True),
    )


# -- float32 identity with open_clip ---------------------------------------------------------------


def test_encode_image_matches_open_clip(case):
    assert case.ours.image.shape == (case.images.shape[0], case.config.embed_dim)
    assert_close(case.ours.image, case.ref.image, **TOL)


def test_encode_text_matches_open_clip(case):
    assert case.ours.text.shape == (case.tokens.shape[0], case.config.embed_dim)
    assert_close(case.ours.text, case.ref.text, **TOL)


def test_logits_match_open_clip_both_ways(case):
    assert_close(case.ours.per_image, case.ref.per_image, **TOL)
    assert_close(case.ours.per_text, case.ref.per_text, **TOL)
    assert torch.equal(case.ours.per_text, case.ours.per_image.t())
    assert case.ours.per_image.shape == (case.images.shape[0], case.tokens.shape[0])


def test_model_reports_the_reference_attributes(case):
    model, config = case.model, case.config
    assert model.context_length == config.context_length
    assert model.vocab_size == config.vocab_size
    assert model.visual.input_resolution == config.image_resolution
    assert model.dtype == torch.float32
    assert not model.training


@pytest.mark.parametrize("config", [TINY_VIT, TINY_RESNET], ids=lambda c: c.name)
def test_matches_openai_clip_build_model(config):
    clip = openai_clip()
    state_dict = make_state_dict(config, seed=4, with_jit_metadata=True)
    images, tokens = sample_images(config, 2, seed=5), sample_tokens(config, 2, seed=6)
    reference = clip.model.build_model(dict(state_dict)).float().eval()
    ours = build_ours(state_dict)
    with torch.no_grad():
        expected, got = reference(images, tokens), ours(images, tokens)
        assert_close(ours.encode_image(images), reference.encode_image(images), **TOL)
        assert_close(ours.encode_text(tokens), reference.encode_text(tokens), **TOL)
    assert_close(got[0], expected[0], **TOL)
    assert_close(got[1], expected[1], **TOL)


# -- activations, sizes and weights' dtypes -----------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY_VIT, TINY_RESNET], ids=lambda c: c.name)
def test_gelu_models_match_open_clip_without_quick_gelu(config):
    state_dict = make_state_dict(config, seed=7)
    images, tokens = sample_images(config, 2, seed=8), sample_tokens(config, 2, seed=9)
    ours = outputs(build_ours(state_dict, quick_gelu=False), images, tokens, open_clip=False)
    ref = outputs(reference_model(state_dict, quick_gelu=False), images, tokens, open_clip=True)
    assert_same_outputs(ours, ref)
    quick = outputs(build_ours(state_dict, quick_gelu=True), images, tokens, open_clip=False)
    assert not torch.allclose(quick.text, ours.text, rtol=1e-3, atol=1e-3)  # the flag changes the computation


@pytest.mark.parametrize("config", [CUSTOM_TEXT_VIT, CUSTOM_TEXT_RESNET], ids=lambda c: c.name)
def test_non_default_context_length_and_vocabulary_match_open_clip(config):
    state_dict = make_state_dict(config, seed=10)
    images, tokens = sample_images(config, 2, seed=11), sample_tokens(config, 4, seed=12)
    model = build_ours(state_dict)
    assert (model.context_length, model.vocab_size) == (config.context_length, config.vocab_size)
    ours = outputs(model, images, tokens, open_clip=False)
    ref = outputs(reference_model(state_dict), images, tokens, open_clip=True)
    assert_same_outputs(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_checkpoints_of_other_precisions_load_and_match(dtype):
    state_dict = make_state_dict(TINY_VIT, seed=13, dtype=dtype)
    images, tokens = sample_images(TINY_VIT, 2), sample_tokens(TINY_VIT, 2)
    ours = outputs(build_ours(state_dict), images, tokens, open_clip=False)
    ref = outputs(reference_model({k: v.float() for k, v in state_dict.items()}), images, tokens, open_clip=True)
    assert_same_outputs(ours, ref)


def test_all_half_checkpoint_matches_open_clip():
    # Some re-saved checkpoints halve every tensor, LayerNorm and embeddings included.
    state_dict = {k: v.half() for k, v in make_state_dict(TINY_RESNET, seed=14).items() if v.is_floating_point()}
    state_dict |= {k: v for k, v in make_state_dict(TINY_RESNET, seed=14).items() if not v.is_floating_point()}
    images, tokens = sample_images(TINY_RESNET, 2), sample_tokens(TINY_RESNET, 2)
    ours = outputs(build_ours(state_dict), images, tokens, open_clip=False)
    ref = outputs(reference_model(state_dict), images, tokens, open_clip=True)
    assert_same_outputs(ours, ref)


# -- text details --------------------------------------------------------------------------------------


def test_text_is_read_at_the_end_of_text_token_and_padding_is_irrelevant():
    model = build_ours(make_state_dict(TINY_VIT, seed=15))
    tokens = sample_tokens(TINY_VIT, 4, seed=16)
    used = int(tokens.argmax(dim=-1).max()) + 1
    with torch.no_grad():
        full = model.encode_text(tokens)
        trimmed = model.encode_text(tokens[:, :used])
        as_int32 = model.encode_text(tokens.int())
        changed_after_end = tokens.clone()
        changed_after_end[:, used:] = 7
        assert_close(model.encode_text(changed_after_end), full, **TOL)
    assert_close(trimmed, full, **TOL)
    assert_close(as_int32, full, **TOL)


def test_padding_after_the_last_end_token_is_not_computed_except_when_traced():
    model = build_ours(make_state_dict(TINY_VIT, seed=15))
    tokens = sample_tokens(TINY_VIT, 3, seed=16)
    lengths: list[int] = []
    model.transformer.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        eager = model.encode_text(tokens)
        assert lengths == [int(tokens.argmax(dim=-1).max()) + 1] and lengths[0] < TINY_VIT.context_length
        short = tokens.clone()
        short[:, 3:] = 0
        short[:, 2] = TINY_VIT.vocab_size - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            traced = torch.jit.trace_module(model, {"encode_text": short})  # on short prompts, run on longer ones
        assert_close(traced.encode_text(tokens), eager, **TOL)
    assert TINY_VIT.context_length in lengths[1:]  # the trace ran the full context


def test_quick_gelu_is_the_same_with_and_without_autograd():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    expected = x * torch.sigmoid(1.702 * x)
    with torch.no_grad():
        assert torch.equal(QuickGELU()(x), expected)  # computed in place of its own buffer
    out = QuickGELU()(x)
    out.sum().backward()
    reference = x.detach().clone().requires_grad_()
    (reference * torch.sigmoid(1.702 * reference)).sum().backward()
    assert torch.equal(out, expected) and torch.equal(x.grad, reference.grad)


def test_changing_a_token_before_the_end_changes_the_features():
    model = build_ours(make_state_dict(TINY_VIT, seed=15))
    tokens = sample_tokens(TINY_VIT, 2, seed=16)
    edited = tokens.clone()
    edited[:, 1] = (edited[:, 1] + 1) % (TINY_VIT.vocab_size - 2)
    with torch.no_grad():
        assert not torch.allclose(model.encode_text(tokens), model.encode_text(edited))


def test_text_longer_than_the_context_is_refused():
    model = build_ours(make_state_dict(TINY_VIT))
    too_long = torch.zeros((1, TINY_VIT.context_length + 1), dtype=torch.long)
    with pytest.raises(ConfigurationError, match="context length is 16"):
        model.encode_text(too_long)


@pytest.mark.parametrize("config", [TINY_VIT, TINY_RESNET], ids=lambda c: c.name)
def test_images_of_the_wrong_size_are_refused(config):
    model = build_ours(make_state_dict(config))
    side = config.image_resolution + 32
    with pytest.raises(ConfigurationError, match=f"expects {config.image_resolution}x{config.image_resolution}"):
        model.encode_image(torch.zeros((1, 3, side, side)))


# -- construction and loading ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY_VIT, TINY_RESNET], ids=lambda c: c.name)
def test_meta_construction_allocates_nothing_and_loading_fills_everything(config):
    state_dict = make_state_dict(config, with_jit_metadata=True)
    spec = config.spec()
    plugin = vit if spec.family == "vit" else resnet
    with torch.device("meta"):
        model = plugin.build_model(spec=spec)
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    result = model.load_state_dict(state_dict, strict=True, assign=True)  # JIT metadata keys are dropped
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.visual.conv1.weight is not None and model.visual.conv1.weight.data_ptr() == (
        state_dict["visual.conv1.weight"].data_ptr()
    )  # assigned, not copied
    assert "input_resolution" in state_dict  # the caller's dict is left alone


def test_float32_weights_already_in_place_are_not_copied():
    state_dict = make_state_dict(TINY_RESNET, dtype=torch.float32)
    model = build_ours(state_dict)
    for key, tensor in model.state_dict().items():
        assert tensor.data_ptr() == state_dict[key].data_ptr(), key
    cast_model(model, torch.float32, device="cpu")
    assert model.visual.conv1.weight.data_ptr() == state_dict["visual.conv1.weight"].data_ptr()


def test_one_element_logit_scale_is_accepted():
    state_dict = make_state_dict(TINY_VIT)
    state_dict["logit_scale"] = state_dict["logit_scale"].reshape(1)
    model = build_ours(state_dict)
    assert model.logit_scale.shape == ()
    assert_close(model.logit_scale.exp(), torch.tensor(1 / 0.07))


def test_missing_and_unexpected_keys_still_fail_strict_loading():
    state_dict = make_state_dict(TINY_VIT)
    with torch.device("meta"):
        model = vit.build_model(spec=TINY_VIT.spec())
    with pytest.raises(RuntimeError, match="ln_final.bias"):
        model.load_state_dict({k: v for k, v in state_dict.items() if k != "ln_final.bias"}, strict=True, assign=True)
    with pytest.raises(RuntimeError, match="extra.weight"):
        model.load_state_dict({**state_dict, "extra.weight": torch.zeros(1)}, strict=True, assign=True)


# -- half precision ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY_VIT, TINY_RESNET], ids=lambda c: c.name)
def test_cast_model_halves_exactly_what_the_reference_halves(config):
    # OpenAI's convert_weights halves convolutions, linear layers, attention and the two projections; norms,
    # embeddings and logit_scale stay float32: the dtypes of the official half-precision files
    state_dict = make_state_dict(config, dtype=torch.float32)
    reference = openai_clip().model.build_model(dict(state_dict)).state_dict()
    model = build_ours(state_dict)
    params_before = {name: id(p) for name, p in model.named_parameters()}
    cast_model(model, torch.float16)
    assert {name: id(p) for name, p in model.named_parameters()} == params_before
    ours = {name: tensor.dtype for name, tensor in model.state_dict().items()}
    assert ours == {name: reference[name].dtype for name in ours}
    assert {torch.float16, torch.float32} <= set(ours.values())
    assert ours["logit_scale"] == ours["token_embedding.weight"] == torch.float32
    assert model.dtype == torch.float16
    with pytest.raises(ConfigurationError):
        cast_model(model, torch.int8)


@pytest.mark.parametrize("config", [TINY_VIT, TINY_RESNET], ids=lambda c: c.name)
def test_half_precision_matches_openai_clip_in_its_own_half_precision(config):
    # OpenAI's model after convert_weights runs on CPU too: fp16 weights, fp32 LayerNorm/BatchNorm.
    clip = openai_clip()
    state_dict = make_state_dict(config, seed=17)
    images, tokens = sample_images(config, 2, seed=18), sample_tokens(config, 2, seed=19)
    reference = clip.model.build_model(dict(state_dict)).eval()
    ours = build_ours(state_dict, dtype=torch.float16)
    with torch.no_grad():
        expected_image, got_image = reference.encode_image(images), ours.encode_image(images)
        expected_text, got_text = reference.encode_text(tokens), ours.encode_text(tokens)
        expected_logits, got_logits = reference(images, tokens)[0], ours(images, tokens)[0]
    assert got_image.dtype == got_text.dtype == got_logits.dtype == torch.float16
    assert expected_image.dtype == torch.float16
    # Same fp16 weights and casts; only summation order may differ: allow two fp16 ulps of the largest value.
    for got, expected in ((got_image, expected_image), (got_text, expected_text), (got_logits, expected_logits)):
        two_ulps = 2.0**-9 * expected.abs().max().item()
        assert_close(got.float(), expected.float(), rtol=0.0, atol=two_ulps)


# -- end to end through clipkit.load ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "fmt", "quick_gelu"),
    [(TINY_VIT, "zip", True), (TINY_RESNET, "zip", True), (TINY_VIT, "safetensors", False), (TINY_RESNET, "legacy", False)],
    ids=["vit-zip", "resnet-zip", "vit-safetensors-gelu", "resnet-legacy-gelu"],
)
def test_clipkit_load_matches_open_clip(tmp_path, config, fmt, quick_gelu):
    path = tmp_path / f"model.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    state_dict = write_checkpoint(path, config, seed=20, format=fmt, with_jit_metadata=fmt != "safetensors")
    overrides = {} if quick_gelu else {"quick_gelu": False}
    model, preprocess = clipkit.load(str(path), device="cpu", **overrides)
    images, tokens = sample_images(config, 2, seed=21), sample_tokens(config, 2, seed=22)
    ours = outputs(model, images, tokens, open_clip=False)
    ref = outputs(reference_model(state_dict, quick_gelu=quick_gelu), images, tokens, open_clip=True)
    assert_same_outputs(ours, ref)
    assert model.dtype == torch.float32 and not model.training
    assert model.visual.input_resolution == config.image_resolution
    assert callable(preprocess)


def test_clipkit_load_in_half_precision_keeps_norms_in_float32(tmp_path):
    path = tmp_path / "rn.pt"
    write_checkpoint(path, TINY_RESNET, with_jit_metadata=True)
    model, _ = clipkit.load(path, device="cpu", dtype=torch.float16)
    assert model.dtype == torch.float16
    assert model.visual.bn1.weight.dtype == torch.float32
    assert model.ln_final.weight.dtype == torch.float32
    assert model.visual.layer1[0].conv1.weight.dtype == torch.float16
    with torch.no_grad():
        logits, _ = model(sample_images(TINY_RESNET, 2), sample_tokens(TINY_RESNET, 2))
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()
