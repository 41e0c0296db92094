"""The built-in ResNet and ViT plugins: which state dicts they claim, the specs they infer, the errors they raise.

State dicts come from ``tests/factories.py`` on the meta device (shapes only),
so even RN50x64 costs nothing to detect.
"""

from __future__ import annotations

import attrs
import pytest
import torch

from clipkit.builtin import resnet, vit
from clipkit.shapes import default_heads
from clipkit.builtin.clip_specs import ResNetSpec, ViTSpec
from clipkit.errors import StateDictError
from clipkit.plugins import PluginRegistry
from clipkit.spec import ArchSpec
from factories import OFFICIAL_CONFIGS, TINY_RESNET, TINY_VIT, CLIPConfig, make_state_dict

TEXT_512 = dict(context_length=77, vocab_size=49408, text_width=512, text_layers=12, text_heads=8)
TEXT_640 = dict(context_length=77, vocab_size=49408, text_width=640, text_layers=12, text_heads=10)
TEXT_768 = dict(context_length=77, vocab_size=49408, text_width=768, text_layers=12, text_heads=12)
TEXT_1024 = dict(context_length=77, vocab_size=49408, text_width=1024, text_layers=12, text_heads=16)

# Written out by hand from the published architectures, not derived from the factory's table.
EXPECTED_OFFICIAL: dict[str, ArchSpec] = {
    "RN50": ResNetSpec(image_resolution=224, embed_dim=1024, vision_width=64, vision_layers=(3, 4, 6, 3),
                       vision_heads=32, **TEXT_512),
    "RN101": ResNetSpec(image_resolution=224, embed_dim=512, vision_width=64, vision_layers=(3, 4, 23, 3),
                        vision_heads=32, **TEXT_512),
    "RN50x4": ResNetSpec(image_resolution=288, embed_dim=640, vision_width=80, vision_layers=(4, 6, 10, 6),
                         vision_heads=40, **TEXT_640),
    "RN50x16": ResNetSpec(image_resolution=384, embed_dim=768, vision_width=96, vision_layers=(6, 8, 18, 8),
                          vision_heads=48, **TEXT_768),
    "RN50x64": ResNetSpec(image_resolution=448, embed_dim=1024, vision_width=128, vision_layers=(3, 15, 36, 10),
                          vision_heads=64, **TEXT_1024),
    "ViT-B/32": ViTSpec(image_resolution=224, embed_dim=512, vision_width=768, vision_layers=12, vision_heads=12,
                        vision_patch_size=32, **TEXT_512),
    "ViT-B/16": ViTSpec(image_resolution=224, embed_dim=512, vision_width=768, vision_layers=12, vision_heads=12,
                        vision_patch_size=16, **TEXT_512),
    "ViT-L/14": ViTSpec(image_resolution=224, embed_dim=768, vision_width=1024, vision_layers=24, vision_heads=16,
                        vision_patch_size=14, **TEXT_768),
    "ViT-L/14@336px": ViTSpec(image_resolution=336, embed_dim=768, vision_width=1024, vision_layers=24,
                              vision_heads=16, vision_patch_size=14, **TEXT_768),
}

CUSTOM_CONFIGS = [
    CLIPConfig("vit-odd", embed_dim=48, image_resolution=35, vision_layers=3, vision_width=96, vision_patch_size=7,
               context_length=20, vocab_size=500, text_width=128, text_layers=1),
    CLIPConfig("vit-wide-heads", embed_dim=40, image_resolution=16, vision_layers=1, vision_width=192,
               vision_patch_size=4, context_length=5, vocab_size=50, text_width=256, text_layers=4),
    CLIPConfig("resnet-odd", embed_dim=24, image_resolution=96, vision_layers=(2, 1, 3, 1), vision_width=8,
               vision_patch_size=None, context_length=8, vocab_size=300, text_width=32, text_layers=3),
    CLIPConfig("resnet-big-ctx", embed_dim=64, image_resolution=160, vision_layers=(1, 1, 1, 2), vision_width=24,
               vision_patch_size=None, context_length=128, vocab_size=64000, text_width=192, text_layers=2),
    TINY_VIT,
    TINY_RESNET,
]


def detect(state_dict) -> tuple[ArchSpec | None, ArchSpec | None]:
    return resnet.detect_architecture(state_dict=state_dict), vit.detect_architecture(state_dict=state_dict)


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


# -- the nine official architectures ------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED_OFFICIAL))
def test_official_architectures_are_detected_exactly(name):
    state_dict = make_state_dict(OFFICIAL_CONFIGS[name], device="meta", with_jit_metadata=True)
    by_resnet, by_vit = detect(state_dict)
    expected = EXPECTED_OFFICIAL[name]
    if expected.family == "resnet":
        assert by_vit is None
        assert by_resnet == expected
    else:
        assert by_resnet is None
        assert by_vit == expected


@pytest.mark.parametrize("config", [TINY_RESNET, TINY_VIT], ids=lambda c: c.name)
def test_detection_reads_only_shapes_and_ignores_metadata(config):
    on_meta = make_state_dict(config, device="meta")
    on_cpu = make_state_dict(config, device="cpu", with_jit_metadata=True)
    assert detect(on_meta) == detect(on_cpu)


def test_exactly_one_builtin_claims_each_official_checkpoint():
    registry = PluginRegistry(entry_points=False, builtins=("clipkit.builtin.resnet", "clipkit.builtin.vit"))
    for name, expected in EXPECTED_OFFICIAL.items():
        answers, failures = registry.call_all(
            "detect_architecture", state_dict=make_state_dict(OFFICIAL_CONFIGS[name], device="meta"), path=None
        )
        assert failures == []
        assert answers == [(f"clipkit.builtin.{expected.family}", expected)], name


def test_plugin_docstrings_name_their_signature():
    registry = PluginRegistry(entry_points=False, builtins=("clipkit.builtin.resnet", "clipkit.builtin.vit"))
    for key in resnet.SIGNATURE:
        assert key in registry.plugin_doc("clipkit.builtin.resnet")
    for key in vit.SIGNATURE:
        assert key in registry.plugin_doc("clipkit.builtin.vit")


# -- custom sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CUSTOM_CONFIGS, ids=lambda c: c.name)
def test_custom_sizes_are_detected(config):
    by_resnet, by_vit = detect(make_state_dict(config, device="meta"))
    found = by_resnet if config.family == "resnet" else by_vit
    other = by_vit if config.family == "resnet" else by_resnet
    assert other is None
    assert found == config.spec()


def test_head_count_follows_64_wide_heads_and_divides_the_width():
    assert [default_heads(w) for w in (32, 64, 512, 640, 768, 1024, 2048, 4096)] == [1, 1, 8, 10, 12, 16, 32, 64]
    assert default_heads(200) == 2  # 200 // 64 = 3 does not divide 200
    assert default_heads(448) == 7
    config = TINY_VIT.with_(text_width=200, text_heads_override=2)
    spec = vit.detect_architecture(state_dict=make_state_dict(config, device="meta"))
    assert spec.text_heads == 2 and spec.text_width == 200


def test_resnet_with_odd_width_gets_a_dividing_head_count():
    config = TINY_RESNET.with_(vision_width=10)  # attention pool width 320: 320 // 64 = 5 heads
    spec = resnet.detect_architecture(state_dict=make_state_dict(config, device="meta"))
    assert (spec.vision_width, spec.vision_heads) == (10, 5)


# -- state dicts that are not ours ----------------------------------------------------------------


def test_each_family_ignores_the_other():
    assert vit.detect_architecture(state_dict=make_state_dict(TINY_RESNET, device="meta")) is None
    assert resnet.detect_architecture(state_dict=make_state_dict(TINY_VIT, device="meta")) is None


def test_transformers_layout_is_not_claimed():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=100, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    with torch.device("meta"):
        state_dict = transformers.CLIPModel(config).state_dict()
    assert any(key.startswith("vision_model.") for key in state_dict)
    assert detect(state_dict) == (None, None)


def test_open_clip_custom_text_layout_is_not_claimed():
    renamed = {
        (key if key.startswith("visual.") else f"text.{key}"): value
        for key, value in make_state_dict(TINY_VIT, device="meta").items()
    }
    assert detect(renamed) == (None, None)


@pytest.mark.parametrize(
    "state_dict",
    [
        {},
        {"weight": meta(4, 4), "bias": meta(4)},
        {"fc.weight": meta(10, 3), "conv1.weight": meta(8, 3, 3, 3), "positional_embedding": meta(5, 8)},
        {k: v for k, v in make_state_dict(TINY_VIT, device="meta").items() if k.startswith("visual.")},
        {k: v for k, v in make_state_dict(TINY_RESNET, device="meta").items() if k.startswith("visual.")},
        {k: v for k, v in make_state_dict(TINY_VIT, device="meta").items() if not k.startswith("visual.")},
    ],
    ids=["empty", "random", "lookalike", "vit-vision-only", "resnet-vision-only", "text-only"],
)
def test_foreign_state_dicts_are_not_claimed(state_dict):
    assert detect(state_dict) == (None, None)


def test_a_vit_whose_patch_conv_is_not_4d_is_not_claimed():
    state_dict = make_state_dict(TINY_VIT, device="meta")
    state_dict["visual.conv1.weight"] = meta(64, 3 * 8 * 8)
    assert vit.detect_architecture(state_dict=state_dict) is None


# -- inconsistent state dicts -------------------------------------------------------------------------


def _vit_with(**changes):
    state_dict = make_state_dict(TINY_VIT, device="meta")
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del state_dict[key]
        else:
            state_dict[key] = value
    return state_dict


def _resnet_with(**changes):
    state_dict = make_state_dict(TINY_RESNET, device="meta")
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            for k in [k for k in state_dict if k == key or k.startswith(key + ".")]:
                del state_dict[k]
        else:
            state_dict[key] = value
    return state_dict


@pytest.mark.parametrize(
    ("plugin", "state_dict", "key", "shape"),
    [
        (vit, _vit_with(visual__positional_embedding=meta(18, 48)), "visual.positional_embedding", "(18, 48)"),
        (vit, _vit_with(visual__positional_embedding=meta(1, 64)), "visual.positional_embedding", "(1, 64)"),
        (vit, _vit_with(visual__positional_embedding=meta(17, 48)), "visual.positional_embedding", "(17, 48)"),
        (vit, _vit_with(visual__positional_embedding=meta(5, 48)), "visual.positional_embedding", "(5, 48)"),
        (vit, _vit_with(text_projection=meta(48, 32)), "text_projection", "(48, 32)"),
        (vit, _vit_with(positional_embedding=meta(16, 32)), "positional_embedding", "(16, 32)"),
        (vit, _vit_with(visual__proj=meta(64, 16)), "visual.proj", "(64, 16)"),
        (vit, _vit_with(visual__class_embedding=meta(32)), "visual.class_embedding", "(32,)"),
        (vit, _vit_with(visual__conv1__weight=meta(64, 1, 8, 8)), "visual.conv1.weight", "(64, 1, 8, 8)"),
        (vit, _vit_with(visual__conv1__weight=meta(64, 3, 8, 4)), "visual.conv1.weight", "(64, 3, 8, 4)"),
        (vit, _vit_with(visual__ln_post__weight=None), "visual.ln_post.weight", ""),
        (vit, _vit_with(logit_scale=meta(2)), "logit_scale", "(2,)"),
        (vit, _vit_with(transformer__resblocks__1__mlp__c_fc__weight=meta(128, 64)),
         "transformer.resblocks.1.mlp.c_fc.weight", "(128, 64)"),
        (vit, _vit_with(visual__transformer__resblocks__0__attn__in_proj_weight=meta(96, 64)),
         "visual.transformer.resblocks.0.attn.in_proj_weight", "(96, 64)"),
        (resnet, _resnet_with(visual__attnpool__positional_embedding=meta(6, 512)),
         "visual.attnpool.positional_embedding", "(6, 512)"),
        (resnet, _resnet_with(visual__attnpool__positional_embedding=meta(5, 256)),
         "visual.attnpool.positional_embedding", "(5, 256)"),
        (resnet, _resnet_with(visual__attnpool__c_proj__weight=meta(16, 512)), "visual.attnpool.c_proj.weight",
         "(16, 512)"),
        (resnet, _resnet_with(text_projection=meta(32, 32)), "text_projection", "(32, 32)"),
        (resnet, _resnet_with(visual__conv1__weight=meta(8, 3, 7, 7)), "visual.conv1.weight", "(8, 3, 7, 7)"),
        (resnet, _resnet_with(visual__layer3__0__conv3__weight=meta(64, 64, 1, 1)), "visual.layer3.0.conv3.weight",
         "(64, 64, 1, 1)"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_inconsistent_shapes_raise_state_dict_error_naming_the_key(plugin, state_dict, key, shape):
    with pytest.raises(StateDictError) as info:
        plugin.detect_architecture(state_dict=state_dict)
    message = str(info.value)
    assert key in message and shape in message
    assert key in {k for k, *_ in info.value.mismatched} | set(info.value.missing)


def test_a_gap_in_the_block_numbers_is_an_error():
    state_dict = make_state_dict(TINY_VIT.with_(text_layers=3), device="meta")
    for key in [k for k in state_dict if k.startswith("transformer.resblocks.1.")]:
        del state_dict[key]
    with pytest.raises(StateDictError, match=r"transformer\.resblocks\.1 missing") as info:
        vit.detect_architecture(state_dict=state_dict)
    assert info.value.missing == ("transformer.resblocks.1",)


def test_a_resnet_without_a_stage_is_an_error():
    with pytest.raises(StateDictError, match=r"visual\.layer3") as info:
        resnet.detect_architecture(state_dict=_resnet_with(visual__layer3=None))
    assert "visual.layer3.0.conv1.weight" in info.value.missing


# -- build_model ---------------------------------------------------------------------------------------


def test_build_model_answers_only_for_its_own_family():
    vit_spec, resnet_spec = TINY_VIT.spec(), TINY_RESNET.spec()
    with torch.device("meta"):
        assert resnet.build_model(spec=vit_spec) is None
        assert vit.build_model(spec=resnet_spec) is None
        assert vit.build_model(spec=ArchSpec(family="vit", image_resolution=32)) is None
        assert vit.build_model(spec=attrs.evolve(vit_spec, family="other")) is None
        model = vit.build_model(spec=vit_spec)
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", list(EXPECTED_OFFICIAL))
def test_built_model_has_the_official_keys_and_shapes(name):
    config = OFFICIAL_CONFIGS[name]
    spec = EXPECTED_OFFICIAL[name]
    plugin = resnet if spec.family == "resnet" else vit
    with torch.device("meta"):
        model = plugin.build_model(spec=spec)
    ours = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    official = {key: tuple(t.shape) for key, t in make_state_dict(config, device="meta").items()}
    assert list(ours) == list(official)  # same keys, same order as the official archives
    assert ours == official
    assert model.context_length == 77 and model.vocab_size == 49408
    assert model.visual.input_resolution == spec.image_resolution
