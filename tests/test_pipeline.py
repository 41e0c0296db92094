"""The core pipeline and the plugin framework: dispatch rules, typed errors, dtype/device, zero-copy loading."""

from __future__ import annotations

import sys
import warnings

import attrs
import factories
import pytest
import torch

import clipkit
from clipkit.errors import (
    AmbiguousArchitectureError,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigurationError,
    NoClaimantError,
    PluginError,
    StateDictError,
    UnknownModelError,
)
from clipkit.plugins import PluginWarning, register_plugin

OFFICIAL_NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


@pytest.fixture(scope="module")
def vit_sd() -> dict[str, torch.Tensor]:
    return factories.make_state_dict(factories.TINY_VIT, seed=3)


def _save(tmp_path, sd, name="ckpt.pt", **kwargs):
    return factories.save_state_dict(sd, tmp_path / name, **kwargs)


def _outputs(model, config):
    images = factories.sample_images(config)
    tokens = factories.sample_tokens(config)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens), model(images, tokens)[0]


# -- names ---------------------------------------------------------------------------------


def test_available_models_are_the_nine_official_releases():
    assert clipkit.available_models() == OFFICIAL_NAMES


def test_unknown_name_lists_the_available_models():
    with pytest.raises(UnknownModelError, match="ViT-B/32") as info:
        clipkit.load("ViT-H/99", device="cpu")
    assert "not a registered model name" in str(info.value)


def test_missing_path_is_checkpoint_not_found(tmp_path):
    with pytest.raises(CheckpointNotFoundError):
        clipkit.load(tmp_path / "absent.pt", device="cpu")
    with pytest.raises(CheckpointNotFoundError):
        clipkit.load(str(tmp_path / "absent.pt"), device="cpu")


def test_duplicate_registered_name_fails_only_when_that_name_is_used(registry, tmp_path, vit_sd):
    class Dup:
        @clipkit.hookimpl
        def register_models(self):
            return {"ViT-B/32": clipkit.ModelSource(url="https://mirror.example/ViT-B-32.pt")}

    register_plugin(Dup(), name="dup-names")
    with pytest.warns(PluginWarning, match="registered by both 'clipkit.builtin.models' and 'dup-names'"):
        assert clipkit.available_models() == OFFICIAL_NAMES
    with pytest.raises(PluginError, match="registered by both 'clipkit.builtin.models' and 'dup-names'"):
        clipkit.load("ViT-B/32", device="cpu")
    model, _ = clipkit.load(_save(tmp_path, vit_sd), device="cpu")  # everything else keeps working
    assert model.visual.input_resolution == factories.TINY_VIT.image_resolution


def test_register_models_is_asked_once_until_plugins_change(registry):
    calls = []

    class Counting:
        @clipkit.hookimpl
        def register_models(self):
            calls.append(1)
            return {"counted": clipkit.ModelSource(url="https://example.invalid/counted.pt")}

    register_plugin(Counting(), name="counting")
    for _ in range(3):
        assert "counted" in clipkit.available_models()
    with pytest.raises(UnknownModelError):
        clipkit.load("not-a-model", device="cpu")
    assert len(calls) == 1
    register_plugin(Greedy(), name="greedy")  # any change of plugins asks again
    clipkit.available_models()
    assert len(calls) == 2


def test_local_path_with_double_colon_is_a_path(tmp_path, vit_sd):
    folder = tmp_path / "run::1"
    folder.mkdir()
    model, _ = clipkit.load(str(_save(folder, vit_sd)), device="cpu")
    assert model.visual.input_resolution == factories.TINY_VIT.image_resolution


def test_registered_name_loads_from_the_cache_without_network(registry, tmp_path, vit_sd, monkeypatch):
    import hashlib

    from clipkit.fetching import cache_path

    staged = _save(tmp_path, vit_sd, name="tiny.pt")
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    url = f"https://clip.invalid/models/{digest}/tiny.pt"  # an unroutable host: any network attempt fails
    cache = tmp_path / "cache"
    target = cache_path(url, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(target)

    class Names:
        @clipkit.hookimpl
        def register_models(self):
            return {"tiny-vit": clipkit.ModelSource(url=url, sha256=digest)}

    register_plugin(Names(), name="names")
    monkeypatch.setenv("CLIPKIT_OFFLINE", "1")
    model, _ = clipkit.load("tiny-vit", device="cpu", download_root=cache)
    assert model.visual.input_resolution == factories.TINY_VIT.image_resolution


# -- detection dispatch ------------------------------------------------------------------------


def test_no_claimant_names_every_plugin_and_what_it_looks_for(tmp_path):
    path = _save(tmp_path, {"encoder.layer.0.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)})
    with pytest.raises(NoClaimantError) as info:
        clipkit.load(path, device="cpu")
    message = str(info.value)
    assert "encoder.layer.0.weight" in message
    for plugin in ("clipkit.builtin.vit", "clipkit.builtin.resnet"):
        assert plugin in message
    assert "visual.proj" in message or "visual.conv1" in message  # the ViT plugin's signature is described


@attrs.frozen(kw_only=True)
class GreedySpec(clipkit.ArchSpec):
    family: str = "greedy"


class Greedy:
    """Claims every state dict (a badly written plugin)."""

    @clipkit.hookimpl
    def detect_architecture(self, state_dict):
        return GreedySpec(image_resolution=8)


def test_two_claimants_is_an_error_naming_both(registry, tmp_path, vit_sd):
    register_plugin(Greedy(), name="greedy")
    with pytest.raises(AmbiguousArchitectureError) as info:
        clipkit.load(_save(tmp_path, vit_sd), device="cpu")
    assert set(info.value.claimants) == {"greedy", "clipkit.builtin.vit"}
    assert "greedy" in str(info.value) and "clipkit.builtin.vit" in str(info.value)


def test_a_detector_returning_a_non_spec_is_reported(registry, tmp_path, vit_sd):
    class Sloppy:
        @clipkit.hookimpl
        def detect_architecture(self, state_dict):
            return {"family": "vit"}

    register_plugin(Sloppy(), name="sloppy")
    with pytest.raises(PluginError, match="sloppy") as info:
        clipkit.load(_save(tmp_path, vit_sd), device="cpu")
    assert info.value.plugin == "sloppy" and info.value.hook == "detect_architecture"


def test_a_third_party_plugin_that_raises_is_skipped_with_a_warning(registry, tmp_path, vit_sd):
    class Broken:
        @clipkit.hookimpl
        def detect_architecture(self, state_dict):
            raise KeyError("vision_model.embeddings")

    register_plugin(Broken(), name="broken")
    with pytest.warns(PluginWarning, match=r"'broken' raised KeyError in hook detect_architecture"):
        model, _ = clipkit.load(_save(tmp_path, vit_sd), device="cpu")
    assert type(model).__name__ == "CLIP"


def test_a_hook_that_raises_and_nobody_else_answers_surfaces_as_plugin_error(registry, tmp_path):
    class Broken:
        """Claims nothing, crashes instead."""

        @clipkit.hookimpl
        def detect_architecture(self, state_dict):
            raise RuntimeError("boom")

    register_plugin(Broken(), name="broken")
    path = _save(tmp_path, {"something.else": torch.zeros(1)})
    with pytest.warns(PluginWarning), pytest.raises(NoClaimantError, match="broken.*boom"):
        clipkit.load(path, device="cpu")


def test_plugins_can_take_a_subset_of_hook_arguments_and_see_the_path(registry, tmp_path, vit_sd):
    seen = {}

    class Watcher:
        @clipkit.hookimpl
        def detect_architecture(self, path):
            seen["path"] = path

    register_plugin(Watcher(), name="watcher")
    ckpt = _save(tmp_path, vit_sd)
    clipkit.inspect(ckpt)
    assert seen["path"] == ckpt


def test_a_hook_wrapper_is_refused_by_name_not_dropped(registry):
    class Wrapping:
        @clipkit.hookimpl(wrapper=True)
        def build_model(self, spec):
            return (yield)

    with pytest.raises(PluginError, match=r"'wrapping' declares hook wrappers \(build_model\)") as info:
        register_plugin(Wrapping(), name="wrapping")
    assert info.value.plugin == "wrapping"
    assert "wrapping" not in [name for name, _ in registry.pm.list_name_plugin()]


def test_a_fetched_file_that_is_not_a_checkpoint_is_forgotten_by_its_fetcher(registry, tmp_path):
    page = tmp_path / "page.pt"
    page.write_bytes(b"<!DOCTYPE html><html>sign in</html>")
    asked = []

    class PageFetcher:
        @clipkit.hookimpl
        def fetch_checkpoint(self, source):
            return page if source.startswith("pages://") else None

        @clipkit.hookimpl
        def forget_checkpoint(self, source, path, sha256):
            asked.append((source, path, sha256))
            if source.startswith("pages://keep"):
                return None
            path.unlink()
            return True

    register_plugin(PageFetcher(), name="pages")
    with pytest.raises(CheckpointError, match="not a checkpoint") as info:
        clipkit.load("pages://keep/model.pt", device="cpu")
    assert "removed from the cache" not in str(info.value) and page.exists()
    with pytest.raises(CheckpointError, match="removed from the cache"):
        clipkit.inspect("pages://drop/model.pt")
    assert asked == [("pages://keep/model.pt", page, None), ("pages://drop/model.pt", page, None)]
    assert not page.exists()


# -- weights ------------------------------------------------------------------------------------


def test_missing_key_is_listed(tmp_path, vit_sd):
    sd = dict(vit_sd)
    del sd["transformer.resblocks.1.ln_2.bias"]
    with pytest.raises(StateDictError) as info:
        clipkit.load(_save(tmp_path, sd), device="cpu")
    assert info.value.missing == ("transformer.resblocks.1.ln_2.bias",)
    assert "transformer.resblocks.1.ln_2.bias" in str(info.value)


def test_unexpected_key_is_listed(tmp_path, vit_sd):
    sd = {**vit_sd, "visual.extra_head.weight": torch.zeros(3)}
    with pytest.raises(StateDictError) as info:
        clipkit.load(_save(tmp_path, sd), device="cpu")
    assert "visual.extra_head.weight" in info.value.unexpected


def test_wrong_shape_is_listed_with_both_shapes(tmp_path, vit_sd):
    sd = dict(vit_sd)
    sd["transformer.resblocks.0.mlp.c_fc.bias"] = torch.zeros(7, dtype=torch.float16)
    with pytest.raises(StateDictError) as info:
        clipkit.load(_save(tmp_path, sd), device="cpu")
    assert "transformer.resblocks.0.mlp.c_fc.bias" in str(info.value)
    assert "7" in str(info.value)


@pytest.mark.parametrize("shape", [(), (1,)], ids=["scalar", "one-element"])
def test_logit_scale_as_scalar_or_one_element(tmp_path, vit_sd, shape):
    sd = {**vit_sd, "logit_scale": torch.full(shape, 3.0)}
    model, _ = clipkit.load(_save(tmp_path, sd), device="cpu")
    assert model.logit_scale.shape == () and model.logit_scale.item() == 3.0


@pytest.mark.parametrize(
    "fmt,wrapper,prefix",
    [("zip", None, ""), ("legacy", None, ""), ("safetensors", None, ""), ("zip", "state_dict", "module."),
     ("zip", "model", "")],
)
def test_every_layout_gives_the_same_model(tmp_path, vit_sd, fmt, wrapper, prefix):
    plain, _ = clipkit.load(_save(tmp_path, vit_sd, name="plain.pt"), device="cpu")
    other, _ = clipkit.load(_save(tmp_path, vit_sd, name="other.bin", format=fmt, wrapper=wrapper, prefix=prefix),
                            device="cpu")
    for a, b in zip(_outputs(plain, factories.TINY_VIT), _outputs(other, factories.TINY_VIT)):
        assert torch.equal(a, b)


def test_jit_metadata_entries_are_accepted(tmp_path):
    sd = factories.make_state_dict(factories.TINY_RESNET, with_jit_metadata=True)
    model, preprocess = clipkit.load(_save(tmp_path, sd), device="cpu")
    assert model.visual.input_resolution == factories.TINY_RESNET.image_resolution


def _file_mappings(path) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(str(path)):
                lo, hi = line.split()[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("fmt", ["zip", "safetensors"])
def test_fp32_checkpoint_on_cpu_is_used_in_place_from_the_file_mapping(tmp_path, fmt):
    sd = factories.make_state_dict(factories.TINY_VIT, dtype=torch.float32)
    path = _save(tmp_path, sd, name=f"fp32.{fmt}", format=fmt)
    model, _ = clipkit.load(path, device="cpu")
    ranges = _file_mappings(path.resolve())
    assert ranges, "the checkpoint file is not memory-mapped"
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            ptr = tensor.data_ptr()
            assert any(lo <= ptr < hi for lo, hi in ranges), f"{name} was copied out of the file mapping"


# -- spec overrides, dtype, device -------------------------------------------------------------------


def test_quick_gelu_override_reaches_the_spec_and_the_numbers(tmp_path, vit_sd):
    path = _save(tmp_path, vit_sd)
    gelu, _ = clipkit.load(path, device="cpu", quick_gelu=False)
    reference = factories.reference_model(vit_sd, quick_gelu=False)
    images = factories.sample_images(factories.TINY_VIT)
    with torch.no_grad():
        torch.testing.assert_close(gelu.encode_image(images), reference.encode_image(images), rtol=1e-5, atol=1e-5)
        quick, _ = clipkit.load(path, device="cpu")
        assert not torch.allclose(quick.encode_image(images), gelu.encode_image(images))


def test_unknown_override_names_the_spec_fields(tmp_path, vit_sd):
    with pytest.raises(ConfigurationError, match="quick_gelu"):
        clipkit.load(_save(tmp_path, vit_sd), device="cpu", quick_gelo=False)


def test_invalid_override_value_is_a_configuration_error(tmp_path, vit_sd):
    with pytest.raises(ConfigurationError, match="text_heads"):
        clipkit.load(_save(tmp_path, vit_sd), device="cpu", text_heads=7)
    with pytest.raises(ConfigurationError, match="quick_gelu must be True or False"):
        clipkit.load(_save(tmp_path, vit_sd), device="cpu", quick_gelu="False")


def test_default_on_cpu_is_float32_and_eval_mode(tmp_path, vit_sd):
    model, _ = clipkit.load(_save(tmp_path, vit_sd), device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not model.training and all(not m.training for m in model.modules())
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16"])
def test_half_precision_keeps_norm_layers_in_float32(tmp_path, vit_sd, dtype):
    model, _ = clipkit.load(_save(tmp_path, vit_sd), device="cpu", dtype=dtype)
    expected = dtype if isinstance(dtype, torch.dtype) else torch.float16
    assert model.visual.conv1.weight.dtype == expected
    assert model.transformer.resblocks[0].attn.in_proj_weight.dtype == expected
    assert model.ln_final.weight.dtype == torch.float32
    assert model.logit_scale.dtype == torch.float32  # the reference never rounds the temperature
    if expected == torch.bfloat16:  # CPU has bf16 kernels for every op; compare with the fp32 model
        full, _ = clipkit.load(_save(tmp_path, vit_sd, name="b.pt"), device="cpu")
        tokens = factories.sample_tokens(factories.TINY_VIT)
        with torch.no_grad():
            low = model.encode_text(tokens).float()
            high = full.encode_text(tokens)
        torch.testing.assert_close(low, high, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.int8, "float99"])
def test_bad_dtype(tmp_path, vit_sd, dtype):
    with pytest.raises(ConfigurationError, match="dtype"):
        clipkit.load(_save(tmp_path, vit_sd), device="cpu", dtype=dtype)


def test_bad_device(tmp_path, vit_sd):
    with pytest.raises(ConfigurationError, match="not a device"):
        clipkit.load(_save(tmp_path, vit_sd), device="toaster")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, vit_sd):
    with pytest.raises(ConfigurationError, match="CUDA is not available"):
        clipkit.load(_save(tmp_path, vit_sd), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_default_is_fp16_with_fp32_norms(tmp_path, vit_sd):
    model, _ = clipkit.load(_save(tmp_path, vit_sd))
    assert model.visual.conv1.weight.dtype == torch.float16 and model.visual.conv1.weight.is_cuda
    assert model.ln_final.weight.dtype == torch.float32
    reference = factories.reference_model(vit_sd)
    images = factories.sample_images(factories.TINY_VIT)
    with torch.no_grad():
        got = model.encode_image(images.cuda()).float().cpu()
        torch.testing.assert_close(got, reference.encode_image(images), rtol=2e-2, atol=2e-2)


def test_inspect_does_not_build_a_model(tmp_path, monkeypatch, vit_sd):
    path = _save(tmp_path, vit_sd)

    def refuse(*args, **kwargs):
        raise AssertionError("inspect must not build the model")

    monkeypatch.setattr("clipkit.loader.build_model", refuse)
    spec = clipkit.inspect(path)
    assert spec == factories.TINY_VIT.spec()
    assert eval(repr(spec), {"ViTSpec": clipkit.ViTSpec}) == spec


def test_warnings_are_quiet_on_a_plain_load(tmp_path, vit_sd):
    path = _save(tmp_path, vit_sd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", clipkit.errors.AssumptionWarning)  # a bare file: its guesses are announced
        clipkit.load(path, device="cpu")


@attrs.frozen(kw_only=True)
class MaskSpec(clipkit.ArchSpec):
    family: str = "mask"
    width: int


class MaskModel(torch.nn.Module):
    """Computes a buffer at construction that is not in the state dict, as open_clip's attn_mask is."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)
        self.register_buffer("mask", torch.ones(width), persistent=False)
        self.scale = torch.full((), 2.0)  # a plain tensor attribute
        self.visual = torch.nn.Module()
        self.visual.input_resolution = 4

    def encode_image(self, image):
        return self.proj(image.flatten(1)[:, : self.mask.numel()] * self.mask * self.scale)

    def encode_text(self, text):
        return self.proj(torch.nn.functional.one_hot(text[:, 0], self.mask.numel()).float())


class MaskPlugin:
    @clipkit.hookimpl
    def detect_architecture(self, state_dict):
        if "mask_model.proj.weight" in state_dict:
            return MaskSpec(image_resolution=4, width=state_dict["mask_model.proj.weight"].shape[0])

    @clipkit.hookimpl
    def build_model(self, spec):
        if isinstance(spec, MaskSpec):
            model = MaskModel(spec.width)
            model.register_load_state_dict_pre_hook(
                lambda module, sd, prefix, *a: sd.update(
                    {k.replace("mask_model.", prefix, 1): sd.pop(k) for k in list(sd) if k.startswith("mask_model.")}
                )
            )
            return model


def test_a_plugin_that_computes_tensors_at_construction_still_loads_correctly(registry, tmp_path):
    register_plugin(MaskPlugin(), name="mask")
    weight = torch.randn(6, 6)
    path = _save(tmp_path, {"mask_model.proj.weight": weight, "mask_model.proj.bias": torch.zeros(6)})
    model, _ = clipkit.load(path, device="cpu")
    assert not model.mask.is_meta and torch.equal(model.mask, torch.ones(6))
    image = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        expected = (image.flatten(1)[:, :6] * 2.0) @ weight.t()
        torch.testing.assert_close(model.encode_image(image), expected)
