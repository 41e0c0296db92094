"""open_clip's hub layout loads right, or loudly not: every open_clip 3.3 config, against open_clip's own model.

Each covered config (towers open_clip's own ViT / ModifiedResNet and text
transformer, OpenAI's BPE) is built by open_clip with random weights, saved in
its hub layout, loaded by ``clipkit.load(directory)`` and compared on
``encode_image``, ``encode_text`` and ``forward`` (fp32, CPU, 1e-5). Every other
config raises ``UnsupportedConfigError`` naming the field. See
``tests/open_clip_layout.py`` for how the checkpoints are made.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import clipkit
from clipkit.errors import AssumptionWarning, ConfigurationError, UnsupportedConfigError
from clipkit.spec import CONFIG
from tests import factories
from tests import open_clip_layout as ocl

pytest.importorskip("open_clip")

CONFIGS = ocl.all_configs()
COVERED = sorted(name for name, cfg in CONFIGS.items() if not ocl.refusal_fields(cfg))
REFUSED = sorted(name for name, cfg in CONFIGS.items() if ocl.refusal_fields(cfg))


def _close(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    for key, expected in reference.items():
        torch.testing.assert_close(ours[key], expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{key}: {m}")


def _load_quietly(source: Path, **kwargs: Any) -> tuple[torch.nn.Module, Any, list[AssumptionWarning]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, preprocess = clipkit.load(str(source), device="cpu", **kwargs)
    return model, preprocess, [w.message for w in caught if issubclass(w.category, AssumptionWarning)]


def test_every_open_clip_config_is_either_covered_or_refused() -> None:
    assert len(CONFIGS) == len(COVERED) + len(REFUSED)
    resnets = [name for name in COVERED if name.startswith("RN")]
    assert sorted(resnets) == sorted(f"RN{size}{suffix}" for size in ("50", "101", "50x4", "50x16", "50x64")
                                     for suffix in ("", "-quickgelu"))
    assert {"ViT-B-32", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-e-14", "ViT-M-16-alt"} <= set(COVERED)


@pytest.mark.parametrize("name", COVERED)
def test_open_clip_hub_layout_matches_open_clip(name: str, tmp_path: Path) -> None:
    cfg = ocl.cut(CONFIGS[name])
    model = ocl.build(cfg)
    weights = "bin" if name in ("RN50-quickgelu", "ViT-B-32-quickgelu") else "safetensors"  # both of open_clip's names
    directory = ocl.save_hub_layout(model, cfg, tmp_path / name, weights=weights)
    images, tokens = ocl.inputs(cfg)
    reference = ocl.reference_outputs(model, images, tokens)
    ours, _, assumptions = _load_quietly(directory)
    assert assumptions == [], [str(w) for w in assumptions]
    _close(ocl.clipkit_outputs(ours, images, tokens), reference)
    spec = ours.clipkit_spec
    assert spec.provenance_of("quick_gelu").source == CONFIG
    assert spec.quick_gelu is bool(cfg.get("quick_gelu", False))


@pytest.mark.parametrize("name", COVERED)
def test_full_size_configs_translate_as_open_clip_builds_them(name: str, tmp_path: Path) -> None:
    from clipkit.builtin import open_clip as plugin
    from clipkit.builtin import resnet, vit

    cfg = CONFIGS[name]
    model = ocl.meta_model(cfg)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    resnet_tower = isinstance(cfg["vision_cfg"]["layers"], list)
    detected = (resnet if resnet_tower else vit).infer_spec(model.state_dict())
    spec = plugin.settle_from_config(detected, tmp_path / "open_clip_config.json")
    text_block = model.transformer.resblocks[0]
    assert (spec.text_heads, spec.text_mlp_width) == (text_block.attn.num_heads, text_block.mlp.c_fc.out_features)
    assert spec.quick_gelu is isinstance(text_block.mlp.gelu, open_clip_quick_gelu())
    assert spec.context_length == model.context_length and spec.embed_dim == cfg["embed_dim"]
    if resnet_tower:
        assert spec.vision_heads == model.visual.attnpool.num_heads
        assert spec.image_resolution == model.visual.image_size
    else:
        block = model.visual.transformer.resblocks[0]
        assert (spec.vision_heads, spec.vision_mlp_width) == (block.attn.num_heads, block.mlp.c_fc.out_features)
        assert spec.image_resolution == model.visual.image_size[0] == model.visual.image_size[1]
        assert spec.vision_layers == len(model.visual.transformer.resblocks)
    assert spec.guessed_fields() == []


def open_clip_quick_gelu() -> type:
    from open_clip.transformer import QuickGELU

    return QuickGELU


@pytest.mark.parametrize("name", REFUSED)
def test_unbuildable_open_clip_configs_raise_naming_the_field(name: str, tmp_path: Path) -> None:
    directory = tmp_path / name
    directory.mkdir()
    factories.save_state_dict(factories.make_state_dict(factories.TINY_VIT, dtype=torch.float32),
                              directory / "open_clip_model.safetensors", format="safetensors")
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": CONFIGS[name], "preprocess_cfg": {}}))
    with pytest.raises(UnsupportedConfigError) as caught:
        clipkit.inspect(str(directory))
    assert caught.value.field in ocl.refusal_fields(CONFIGS[name])
    assert caught.value.field in str(caught.value)


#: configs exercising every number-changing model_cfg field no shipped covered config uses (small widths)
FEATURES: dict[str, dict[str, Any]] = {
    "pooling-and-norms": {
        "embed_dim": 32, "init_logit_bias": -10.0,
        "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 96, "layers": 2, "head_width": 32,
                       "no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True,
                       "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
        "text_cfg": {"context_length": 16, "vocab_size": ocl.VOCAB, "width": 64, "heads": 2, "layers": 2,
                     "pool_type": "last", "no_causal_mask": True, "proj_bias": True,
                     "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
    },
    "attentional-pool-and-layer-scale": {
        "embed_dim": 64, "quick_gelu": True,
        "vision_cfg": {"image_size": 48, "patch_size": 16, "width": 96, "layers": 1, "mlp_ratio": 3.0,
                       "attentional_pool": True, "attn_pooler_queries": 8, "attn_pooler_heads": 4,
                       "ls_init_value": 0.1},
        "text_cfg": {"context_length": 16, "vocab_size": ocl.VOCAB, "width": 64, "heads": 4, "layers": 1,
                     "mlp_ratio": 2.5, "ls_init_value": 0.1, "pool_type": "eos", "eos_id": 3, "proj_type": "none"},
    },
    "avg-pool-first-token": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 40, "patch_size": 8, "width": 64, "layers": 1, "head_width": 16,
                       "pool_type": "avg"},
        "text_cfg": {"context_length": 8, "vocab_size": ocl.VOCAB, "width": 32, "heads": 1, "layers": 1,
                     "pool_type": "first"},
    },
    "resnet-heads": {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
        "text_cfg": {"context_length": 8, "vocab_size": ocl.VOCAB, "width": 32, "heads": 2, "layers": 1},
    },
}


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_every_number_changing_field_is_honoured(name: str, tmp_path: Path) -> None:
    cfg = FEATURES[name]
    model = ocl.build(cfg)
    directory = ocl.save_hub_layout(model, cfg, tmp_path / name)
    images, tokens = ocl.inputs(cfg)
    ours, _, assumptions = _load_quietly(directory)
    assert assumptions == []
    _close(ocl.clipkit_outputs(ours, images, tokens), ocl.reference_outputs(model, images, tokens))


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-H-14", "RN50-quickgelu", "ViT-M-16-alt", "pooling-and-norms"])
def test_bare_files_equal_or_warn_naming_the_difference(name: str, tmp_path: Path) -> None:
    cfg = FEATURES.get(name) or ocl.cut(CONFIGS[name])
    model = ocl.build(cfg)
    hub = ocl.save_hub_layout(model, cfg, tmp_path / "hub")
    bare = tmp_path / "bare" / "weights.pt"
    bare.parent.mkdir()
    torch.save(model.state_dict(), bare)
    images, tokens = ocl.inputs(cfg)
    reference = ocl.reference_outputs(model, images, tokens)
    ours, _, assumptions = _load_quietly(bare)
    assert len(assumptions) == 1
    settled = clipkit.inspect(str(hub)).to_dict()
    differs = {field for field, value in ours.clipkit_spec.to_dict().items() if settled[field] != value}
    assert differs <= set(assumptions[0].fields)
    if not differs:
        _close(ocl.clipkit_outputs(ours, images, tokens), reference)
    else:
        fixed, _, _ = _load_quietly(bare, **{field: settled[field] for field in differs})
        _close(ocl.clipkit_outputs(fixed, images, tokens), reference)


def test_large_widths_guess_open_clips_head_counts() -> None:
    from clipkit.builtin.vit import infer_spec

    for width, heads in ((1280, 16), (1408, 16), (1664, 16), (1792, 16), (1024, 16), (768, 12)):
        config = factories.TINY_VIT.with_(vision_width=width, vision_layers=1, name=f"w{width}")
        spec = infer_spec(factories.make_state_dict(config, device="meta"))
        assert spec.vision_heads == heads and spec.provenance_of("vision_heads").source == "convention"


def test_a_config_contradicting_the_weights_is_an_error(tmp_path: Path) -> None:
    cfg = FEATURES["avg-pool-first-token"]
    directory = ocl.save_hub_layout(ocl.build(cfg), cfg, tmp_path / "m")
    config = json.loads((directory / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["width"] = 128
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigurationError, match=r"model_cfg\.vision_cfg\.width gives vision_width=128.*64"):
        clipkit.inspect(str(directory))


def test_inspect_records_the_config_file_and_key(tmp_path: Path) -> None:
    cfg = ocl.cut(CONFIGS["ViT-H-14"])
    directory = ocl.save_hub_layout(ocl.build(cfg), cfg, tmp_path / "h")
    spec = clipkit.inspect(str(directory))
    assert spec.vision_heads == 16
    assert spec.provenance_of("vision_heads").detail == "open_clip_config.json: model_cfg.vision_cfg.head_width"
    assert "absent: open_clip's default False" in spec.provenance_of("quick_gelu").detail
    assert spec.provenance_of("vision_width").source == "shapes"


#: preprocess_cfg variants: (image size, entries)
PREPROCESS: list[tuple[int, dict[str, Any]]] = [
    (48, {}),
    (48, {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "resize_mode": "squash", "interpolation": "bilinear"}),
    (64, {"resize_mode": "longest", "fill_color": 128}),
    (64, {"resize_mode": "longest", "interpolation": "bilinear", "mean": (0.4, 0.45, 0.5)}),
    (48, {"interpolation": "random", "resize_mode": "shortest"}),
]


@pytest.mark.parametrize(("size", "preprocess"), PREPROCESS)
def test_preprocess_cfg_drives_the_transform(size: int, preprocess: dict[str, Any], tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from open_clip.transform import image_transform
    from PIL import Image

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": size, "patch_size": 16, "width": 64, "layers": 1},
           "text_cfg": {"context_length": 8, "vocab_size": ocl.VOCAB, "width": 32, "heads": 1, "layers": 1}}
    directory = ocl.save_hub_layout(ocl.build(cfg, preprocess=preprocess), cfg, tmp_path / "p", preprocess=preprocess)
    _, ours, _ = _load_quietly(directory)
    reference = image_transform(size, is_train=False, mean=preprocess.get("mean"), std=preprocess.get("std"),
                                resize_mode=preprocess.get("resize_mode"),
                                interpolation=preprocess.get("interpolation"),
                                fill_color=preprocess.get("fill_color", 0))
    for photo in ("chelsea", "rocket", "camera", "astronaut"):
        image = Image.fromarray(getattr(skimage_data, photo)())
        torch.testing.assert_close(ours(image), reference(image), rtol=0, atol=0, msg=photo)
