"""open_clip's hub layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) beside the weights.

This plugin claims no state dict: the built-in ViT and ResNet plugins read the
weights (open_clip keeps OpenAI's key layout); this plugin reads the config and,
through ``configure_spec``, settles every field the shapes cannot show (the
activation, head counts, pooling, causal masking, norm epsilons, GELU form,
preprocessing), each recorded with the file and key it came from. Every value
the shapes also show is checked against them. A ``model_cfg`` asking for what
clipkit cannot build (a timm or transformers tower, another tokenizer, a
custom text tower, CoCa, open_clip's custom attention blocks) raises
``UnsupportedConfigError`` naming the field, from ``detect_architecture``, so
the message comes before any other plugin's "not mine".

The config applies to the weights it sits beside in open_clip's layout: a
directory whose chosen checkpoint (``clipkit.layouts``) is open_clip's, or one
of open_clip's weight files (``open_clip_model.safetensors``,
``open_clip_pytorch_model.bin``) loaded by its own path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipkit.builtin.clip_specs import ResNetSpec, ViTSpec
from clipkit.errors import CheckpointError, ConfigurationError, UnsupportedConfigError
from clipkit.folder import contained, names_in, side_file
from clipkit.hookspecs import hookimpl
from clipkit.layouts import LAYOUTS, choose_checkpoint
from clipkit.limits import json_typed, read_json
from clipkit.spec import CLIP_MEAN, CLIP_STD, UNSETTLED, ArchSpec, Provenance

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES: tuple[str, ...] = next(weights for name, _, weights in LAYOUTS if name == "open_clip")

#: keys that only matter for training, or that only a feature clipkit refuses elsewhere reads
_IGNORED_VISION = {"patch_dropout", "pos_embed_type", "output_tokens", "timm_model_pretrained", "timm_pool",
                   "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path", "block_type"}
_IGNORED_TEXT = {"pad_id", "output_tokens", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "block_type",
                 "final_ln_after_pool"}  # CLIP (not CustomTextCLIP) never applies the text tower's own final LN
_IGNORED_TOP = {"init_logit_scale", "nonscalar_logit_scale", "output_dict", "cast_dtype"}
#: open_clip's custom attention block features: their weights and maths are not clipkit's block
_CUSTOM_BLOCK = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")
#: tower keys naming a foreign tower or tokenizer: reported before anything else
_FOREIGN = ("timm_model_name", "hf_model_name", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs")
_UNBUILDABLE = {
    "timm_model_name": "a timm image tower",
    "hf_model_name": "a transformers text tower",
    "hf_tokenizer_name": "another tokenizer than OpenAI's BPE",
    "tokenizer_mode": "another tokenizer mode than OpenAI's BPE",
    "tokenizer_kwargs": "tokenizer options clipkit's OpenAI BPE does not have",
    "embed_cls": "a text class token (CoCa)",
    **{name: "open_clip's custom attention block" for name in _CUSTOM_BLOCK},
}


def config_path_for(path: Path | None) -> Path | None:
    """The ``open_clip_config.json`` that describes the weights at ``path``, or ``None`` when open_clip's layout is not the one read.

    For a directory, only when ``clipkit.layouts`` chooses open_clip's files in
    it; for a file, only when it is one of open_clip's weight files with the
    config beside it.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        choice = choose_checkpoint(names_in(path))
        if choice is None or choice.layout != "open_clip":
            return None
        return contained(path, path / CONFIG_NAME, what="open_clip's layout")
    config = path.parent / CONFIG_NAME
    return config if path.name in WEIGHT_NAMES and side_file(config) else None


def read_config(config_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_cfg, preprocess_cfg)`` from an ``open_clip_config.json``; ``CheckpointError`` if it is not one."""
    raw = read_json(config_path)
    model_cfg = raw.get("model_cfg", raw) if isinstance(raw, dict) else None
    if not isinstance(model_cfg, dict) or not all(key in model_cfg for key in ("embed_dim", "vision_cfg", "text_cfg")):
        raise CheckpointError(
            f"{config_path} has no model_cfg with embed_dim, vision_cfg and text_cfg; it is not an open_clip config"
        )
    preprocess = raw.get("preprocess_cfg", {}) if "model_cfg" in raw else {}
    if not isinstance(preprocess, dict):
        raise CheckpointError(f"{config_path}: preprocess_cfg must be an object, got {preprocess!r}")
    return model_cfg, preprocess


def _unsupported(config_path: Path, field: str, value: Any, why: str) -> UnsupportedConfigError:
    return UnsupportedConfigError(
        f"{config_path}: {field}={value!r} asks for {why}, which clipkit cannot build; no partial or approximate "
        "load is made. Load it with open_clip, or install a clipkit plugin for this architecture.",
        field=field, path=str(config_path),
    )


def check_buildable(config_path: Path, model_cfg: Mapping[str, Any]) -> None:
    """Raise ``UnsupportedConfigError`` naming a ``model_cfg`` field clipkit cannot build or does not know.

    The most telling field is named first: a timm or transformers tower or
    another tokenizer, then a custom text tower or CoCa, then anything unknown.
    """
    known = {"vision_cfg": _VISION_KEYS | _IGNORED_VISION, "text_cfg": _TEXT_KEYS | _IGNORED_TEXT}
    for tower in known:
        if not isinstance(model_cfg[tower], dict):
            raise CheckpointError(f"{config_path}: model_cfg.{tower} must be an object, got {model_cfg[tower]!r}")
        for key, value in model_cfg[tower].items():
            if key in _FOREIGN and value:
                raise _unsupported(config_path, f"model_cfg.{tower}.{key}", value, _UNBUILDABLE[key])
    top = set(model_cfg) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_bias"} - _IGNORED_TOP
    for key in sorted(top, key=lambda k: (k != "multimodal_cfg", k)):  # CoCa says so first
        if key == "custom_text" and not model_cfg[key]:
            continue
        why = {"custom_text": "a custom text tower (CustomTextCLIP)", "multimodal_cfg": "a multimodal decoder (CoCa)"}
        raise _unsupported(config_path, f"model_cfg.{key}", model_cfg[key], why.get(key, "a setting clipkit does not know"))
    for tower, keys in known.items():
        for key, value in model_cfg[tower].items():
            field = f"model_cfg.{tower}.{key}"
            if key in _UNBUILDABLE and value:
                raise _unsupported(config_path, field, value, _UNBUILDABLE[key])
            if key == "block_type" and value not in (None, "default"):
                raise _unsupported(config_path, field, value, "open_clip's custom attention block")
            if key not in keys and key not in _UNBUILDABLE:
                raise _unsupported(config_path, field, value, "a setting clipkit does not know")
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    if isinstance(vision.get("attentional_pool"), str):
        raise _unsupported(config_path, "model_cfg.vision_cfg.attentional_pool", vision["attentional_pool"],
                           "open_clip's two-pooler (CoCa-style) attentional pooling")
    for tower, cfg in (("vision_cfg", vision), ("text_cfg", text)):
        if cfg.get("pool_type") == "none":
            raise _unsupported(config_path, f"model_cfg.{tower}.pool_type", "none", "unpooled token outputs")
        unknown = set(cfg.get("act_kwargs") or {}) - {"approximate"}
        if unknown or (cfg.get("act_kwargs") and model_cfg.get("quick_gelu")):
            raise _unsupported(config_path, f"model_cfg.{tower}.act_kwargs", cfg["act_kwargs"],
                               "activation options other than GELU's approximate (QuickGELU has none)")
        if set(cfg.get("norm_kwargs") or {}) - {"eps"}:
            raise _unsupported(config_path, f"model_cfg.{tower}.norm_kwargs", cfg["norm_kwargs"],
                               "LayerNorm options other than eps")


_VISION_KEYS = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value",
                "attentional_pool", "attn_pooler_queries", "attn_pooler_heads", "no_ln_pre", "final_ln_after_pool",
                "pool_type", "act_kwargs", "norm_kwargs"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "eos_id",
              "no_causal_mask", "pool_type", "proj_bias", "proj_type", "act_kwargs", "norm_kwargs"}


class _Settler:
    """Collects config values for a spec, checking each one the shapes also show."""

    def __init__(self, spec: ViTSpec | ResNetSpec, config_path: Path) -> None:
        self.spec = spec
        self.path = config_path
        self.values: dict[str, Any] = {}
        self.provenance: dict[str, Provenance] = {}

    def set(self, name: str, value: Any, key: str, *, default: str = "") -> None:
        """Settle ``name`` from config ``key`` (``default`` explains the value when the key is absent)."""
        self.values[name] = value
        self.provenance[name] = Provenance.config(self.path.name, key + (f" (absent: {default})" if default else ""))

    def check(self, name: str, value: Any, key: str) -> None:
        """The config's ``key`` must agree with the spec's shape-read ``name``."""
        found = getattr(self.spec, name)
        if value != found:
            raise ConfigurationError(
                f"{self.path}: {key} gives {name}={value!r} but the weights' shapes say {found!r} "
                f"({self.spec.provenance_of(name).detail}); the config does not describe these weights"
            )


def _get(settler: _Settler, cfg: Mapping[str, Any], tower: str, key: str, default: Any,
         kind: type | None = None) -> tuple[Any, str, str]:
    """The value of ``model_cfg.{tower}.{key}`` (open_clip's ``default`` when absent), its key and absence note.

    A value of another type than open_clip's default (a string for a width, a
    number for a flag; ``kind`` when the default is ``None``) is a
    ``ConfigurationError`` naming the key.
    """
    present = key in cfg and cfg[key] is not None
    value = cfg[key] if present else default
    if present and (kind or default is not None):
        _typed(settler.path, f"model_cfg.{tower}.{key}", value, kind or type(default))
    return value, f"model_cfg.{tower}.{key}", "" if present else f"open_clip's default {default!r}"


def _typed(config_path: Path, key: str, value: Any, kind: type) -> Any:
    return json_typed(value, kind, what=f"{config_path}: {key}")


def _settle_common(s: _Settler, model_cfg: Mapping[str, Any]) -> None:
    text = model_cfg["text_cfg"]
    s.check("embed_dim", model_cfg["embed_dim"], "model_cfg.embed_dim")
    quick = _typed(s.path, "model_cfg.quick_gelu", model_cfg.get("quick_gelu", False), bool)
    s.set("quick_gelu", quick, "model_cfg.quick_gelu", default="" if "quick_gelu" in model_cfg else "open_clip's default False")
    bias = model_cfg.get("init_logit_bias")
    if bias is not None:
        _typed(s.path, "model_cfg.init_logit_bias", bias, float)
    s.check("logit_bias", bias is not None, "model_cfg.init_logit_bias")
    for name, key, default in (("context_length", "context_length", 77), ("vocab_size", "vocab_size", 49408),
                               ("text_width", "width", 512), ("text_layers", "layers", 12)):
        value, where, _ = _get(s, text, "text_cfg", key, default)
        s.check(name, value, where)
    width = s.spec.text_width
    ratio, where, _ = _get(s, text, "text_cfg", "mlp_ratio", 4.0)
    s.check("text_mlp_width", int(width * ratio), where)
    value, where, _ = _get(s, text, "text_cfg", "ls_init_value", None, float)
    s.check("text_layer_scale", value is not None, where)
    heads, where, note = _get(s, text, "text_cfg", "heads", 8)
    s.set("text_heads", heads, where, default=note)
    causal, where, note = _get(s, text, "text_cfg", "no_causal_mask", False)
    s.set("text_causal", not causal, where, default=note)
    pool, where, note = _get(s, text, "text_cfg", "pool_type", "argmax")
    s.set("text_pool", pool, where, default=note)
    eos, where, note = _get(s, text, "text_cfg", "eos_id", 2)
    if pool == "eos":
        s.set("text_eos_id", eos, where, default=note)
    proj_type, _, _ = _get(s, text, "text_cfg", "proj_type", "linear")
    proj_bias, _, _ = _get(s, text, "text_cfg", "proj_bias", False)
    expected = "none" if proj_type == "none" else ("linear" if proj_bias else "matrix")
    s.check("text_proj", expected, "model_cfg.text_cfg.proj_type/proj_bias")
    _settle_norm_act(s, text, "text_cfg", "text")


def _settle_norm_act(s: _Settler, cfg: Mapping[str, Any], tower: str, prefix: str) -> None:
    eps, where, _ = _get(s, cfg.get("norm_kwargs") or {}, f"{tower}.norm_kwargs", "eps", None, float)
    s.set(f"{prefix}_norm_eps", float(eps) if eps is not None else 1e-5, where,
          default="" if eps is not None else "LayerNorm's default 1e-05")
    approximate, _, _ = _get(s, cfg.get("act_kwargs") or {}, f"{tower}.act_kwargs", "approximate", None, str)
    s.set(f"{prefix}_gelu_approximate", approximate or "none", f"model_cfg.{tower}.act_kwargs.approximate",
          default="" if approximate else "exact GELU")


def _settle_vit(s: _Settler, vision: Mapping[str, Any]) -> None:
    for name, key, default in (("vision_width", "width", 768), ("vision_layers", "layers", 12),
                               ("vision_patch_size", "patch_size", 16)):
        value, where, _ = _get(s, vision, "vision_cfg", key, default)
        s.check(name, value, where)
    _settle_image_size(s, vision, s.spec.vision_patch_size)
    width = s.spec.vision_width
    ratio, where, _ = _get(s, vision, "vision_cfg", "mlp_ratio", 4.0)
    s.check("vision_mlp_width", int(width * ratio), where)
    value, where, _ = _get(s, vision, "vision_cfg", "ls_init_value", None, float)
    s.check("vision_layer_scale", value is not None, where)
    no_ln_pre, where, _ = _get(s, vision, "vision_cfg", "no_ln_pre", False)
    s.check("vision_ln_pre", not no_ln_pre, where)
    head_width, where, note = _get(s, vision, "vision_cfg", "head_width", 64)
    s.set("vision_heads", width // head_width, where, default=note)
    for name, key, default in (("vision_pool", "pool_type", "tok"),
                               ("vision_final_ln_after_pool", "final_ln_after_pool", False)):
        value, where, note = _get(s, vision, "vision_cfg", key, default)
        s.set(name, value, where, default=note)
    attentional, where, _ = _get(s, vision, "vision_cfg", "attentional_pool", False)
    if attentional:
        queries, where, _ = _get(s, vision, "vision_cfg", "attn_pooler_queries", 256)
        s.check("vision_attn_pool_queries", queries, where)
        heads, where, note = _get(s, vision, "vision_cfg", "attn_pooler_heads", 8)
        s.set("vision_attn_pool_heads", heads, where, default=note)
    else:
        s.check("vision_attn_pool_queries", 0, where)
    _settle_norm_act(s, vision, "vision_cfg", "vision")


def _settle_resnet(s: _Settler, vision: Mapping[str, Any]) -> None:
    value, where, _ = _get(s, vision, "vision_cfg", "width", 768)
    s.check("vision_width", value, where)
    s.check("vision_layers", tuple(vision["layers"]), "model_cfg.vision_cfg.layers")
    _settle_image_size(s, vision, 32)
    head_width, where, note = _get(s, vision, "vision_cfg", "head_width", 64)
    s.set("vision_heads", s.spec.vision_width * 32 // head_width, where, default=note)


def _settle_image_size(s: _Settler, vision: Mapping[str, Any], stride: int) -> None:
    """``image_size`` must give the grid the shapes show; it may refine the resolution (a side not a multiple of ``stride``)."""
    size, where = vision.get("image_size"), "model_cfg.vision_cfg.image_size"
    if not isinstance(size, (list, tuple)):  # a pair is checked by the spec; _get checks a single side
        size, where, _ = _get(s, vision, "vision_cfg", "image_size", 224)
    if isinstance(size, (list, tuple)):
        size = size[0] if len(size) == 2 and size[0] == size[1] else tuple(size)
    grid = lambda r: tuple(side // stride for side in (r if isinstance(r, tuple) else (r, r)))  # noqa: E731
    unsettled = s.spec.provenance_of("image_resolution").source == UNSETTLED
    cells = math.prod(grid(s.spec.image_resolution))
    if unsettled and math.prod(grid(size)) != cells:  # the shapes show the patch count only (a non-square grid)
        raise ConfigurationError(
            f"{s.path}: {where}={size!r} gives a {'x'.join(map(str, grid(size)))} grid of {stride}-pixel patches, "
            f"but the weights' position table has {cells} patches; the config does not describe these weights"
        )
    if not unsettled and grid(size) != grid(s.spec.image_resolution):
        s.check("image_resolution", size, where)
    if unsettled or size != s.spec.image_resolution:  # settled, or the same grid at sides the patches do not divide
        s.set("image_resolution", size, where)


def _settle_preprocess(s: _Settler, preprocess: Mapping[str, Any]) -> None:
    unknown = set(preprocess) - {"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"}
    if unknown or preprocess.get("mode", "RGB") != "RGB":
        field = sorted(unknown)[0] if unknown else "mode"
        raise _unsupported(s.path, f"preprocess_cfg.{field}", preprocess.get(field), "preprocessing clipkit does not know")
    defaults = {"mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic", "resize_mode": "shortest",
                "fill_color": 0}
    names = {"mean": "image_mean", "std": "image_std"}
    for key, default in defaults.items():
        present = preprocess.get(key) is not None
        value = preprocess[key] if present else default
        if key == "interpolation" and value == "random":
            value = "bicubic"  # open_clip: 'random' is a training option; inference uses bicubic
        s.set(names.get(key, key), value, f"preprocess_cfg.{key}", default="" if present else f"open_clip's default {default!r}")


def settle_from_config(spec: ViTSpec | ResNetSpec, config_path: Path) -> ViTSpec | ResNetSpec:
    """``spec`` with every field ``open_clip_config.json`` settles, recorded as ``CONFIG``; checks against the shapes."""
    model_cfg, preprocess = read_config(config_path)
    s = _Settler(spec, config_path)
    try:
        check_buildable(config_path, model_cfg)
        is_resnet = isinstance(model_cfg["vision_cfg"].get("layers"), (list, tuple))
        if is_resnet != isinstance(spec, ResNetSpec):
            raise ConfigurationError(
                f"{config_path}: model_cfg.vision_cfg describes a {'ResNet' if is_resnet else 'ViT'} image tower but "
                f"the weights hold a {spec.family} one; the config does not describe these weights"
            )
        _settle_common(s, model_cfg)
        (_settle_resnet if is_resnet else _settle_vit)(s, model_cfg["vision_cfg"])
        _settle_preprocess(s, preprocess)
        try:
            return spec.with_values(s.values, s.provenance)
        except ConfigurationError as exc:  # the spec's own validation: say which file and key the value came from
            keys = [s.provenance[name].detail.split(": ", 1)[-1] for name in s.values if f".{name} " in str(exc)]
            raise ConfigurationError(f"{config_path}: {keys[0] + ': ' if keys else ''}{exc}") from exc
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError, KeyError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(
            f"{config_path} holds a value open_clip could not build from ({type(exc).__name__}: {exc}); "
            "fix the config or load the weights without it"
        ) from exc


@hookimpl
def detect_architecture(state_dict: Mapping[str, torch.Tensor], path: Path | None) -> None:
    """open_clip's hub layout (open_clip_config.json): claims nothing; refuses a model_cfg clipkit cannot build."""
    config_path = config_path_for(path)
    if config_path is not None:
        try:
            check_buildable(config_path, read_config(config_path)[0])
        except (TypeError, AttributeError) as exc:  # a malformed value: reported with the rest by configure_spec
            raise ConfigurationError(f"{config_path} holds a malformed value ({exc}); fix the config") from exc
    return None


@hookimpl
def configure_spec(spec: ArchSpec, path: Path | None) -> ArchSpec | None:
    """Settle a built-in CLIP spec from the open_clip_config.json beside its weights; ``None`` when there is none."""
    config_path = config_path_for(path)
    if config_path is None or not isinstance(spec, (ViTSpec, ResNetSpec)) or spec.family not in ("vit", "resnet"):
        return None
    return settle_from_config(spec, config_path)
