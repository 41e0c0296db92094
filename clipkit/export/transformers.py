"""transformers' layout: a ``CLIPModel`` folder (config.json, preprocessor_config.json, model.safetensors).

The OpenAI-layout weights are renamed into transformers' (the inverse of the
clipkit-hf plugin's ``hf_to_openai``: each ``in_proj`` split into
``q_proj``/``k_proj``/``v_proj``, the projections transposed into
``nn.Linear`` weights). ``config.json`` carries every size and what the
shapes cannot show (activations, head counts, norm epsilon), with
``eos_token_id`` the highest token id, so transformers reads each text where
clipkit does (OpenAI's end-of-text is the highest id). Only what
``CLIPModel`` can express is exported: a ViT with OpenAI's block layout and
pooling; anything else is an ``ExportError`` naming the field. The folder
loads with ``transformers.CLIPModel.from_pretrained`` and, through the
clipkit-hf plugin, with ``clipkit.load``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from clipkit.errors import ExportError
from clipkit.export._files import staged, write_json, write_safetensors
from clipkit.export.spec import model_spec

__all__ = ["openai_to_transformers", "to_transformers"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RENAMED: dict[str, str] = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED: dict[str, str] = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_TOWERS: dict[str, str] = {
    "visual.transformer.resblocks.": "vision_model.encoder.layers.",
    "transformer.resblocks.": "text_model.encoder.layers.",
}
_BLOCK: dict[str, str] = {
    "attn.out_proj.": "self_attn.out_proj.",
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}

#: spec fields this exporter writes into the two config files; every other field must keep its default
_EXPRESSED = frozenset({
    "family", "image_resolution", "embed_dim", "context_length", "vocab_size", "text_width", "text_layers",
    "text_heads", "quick_gelu", "vision_width", "vision_layers", "vision_heads", "vision_patch_size",
    "vision_quick_gelu", "layer_norm_eps", "text_norm_eps", "vision_norm_eps", "image_mean", "image_std",
    "interpolation", "resize_to", "fill_color",
})
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


def openai_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` (an OpenAI-layout CLIP ViT) renamed into transformers' ``CLIPModel`` keys.

    Raises ``ExportError`` for a key that has no place in a ``CLIPModel``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _RENAMED:
            out[_RENAMED[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t()
        else:
            prefix = next((p for p in _TOWERS if key.startswith(p)), None)
            index, _, rest = key[len(prefix):].partition(".") if prefix else ("", "", "")
            block = f"{_TOWERS[prefix]}{index}." if prefix else ""
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip("qkv", value.chunk(3)):
                    out[f"{block}self_attn.{name}_proj.{kind}"] = part
                continue
            renamed = next((block + new + rest[len(old):] for old, new in _BLOCK.items() if rest.startswith(old)), None)
            if prefix is None or renamed is None:
                raise ExportError(f"{key!r} has no place in a transformers CLIPModel; this model cannot be exported to it")
            out[renamed] = value
    return out


def _default(spec: Any, field: attrs.Attribute) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory(spec) if default.takes_self else default.factory()
    return default


def _check_expressible(spec: Any) -> None:
    if not attrs.has(type(spec)) or "vision_patch_size" not in attrs.fields_dict(type(spec)):
        raise ExportError(f"family {spec.family!r} is not a CLIP ViT: transformers' CLIPModel has a ViT image tower only")
    if isinstance(spec.image_resolution, tuple):
        raise ExportError(f"transformers' CLIPModel takes square images; this model is {spec.image_resolution}")
    unexpressed = [
        f"{field.name}={getattr(spec, field.name)!r}"
        for field in attrs.fields(type(spec))
        if field.name not in _EXPRESSED and field.name != "provenance" and getattr(spec, field.name) != _default(spec, field)
    ]
    if getattr(spec, "resize_mode", "shortest") != "shortest" or getattr(spec, "interpolation", "bicubic") not in _RESAMPLE:
        unexpressed.append(f"resize_mode={getattr(spec, 'resize_mode', None)!r}, interpolation={getattr(spec, 'interpolation', None)!r}")
    if unexpressed:
        raise ExportError(
            "transformers' CLIPModel cannot express " + ", ".join(unexpressed) + "; export to safetensors or ONNX instead"
        )


def _eps(spec: Any, tower: str) -> float:
    return float(getattr(spec, f"{tower}_norm_eps", getattr(spec, "layer_norm_eps", 1e-5)))


def config(spec: Any) -> dict[str, Any]:
    """The ``config.json`` of a ``CLIPModel`` with ``spec``'s architecture."""
    vision_quick = getattr(spec, "vision_quick_gelu", None)
    vision_quick = spec.quick_gelu if vision_quick is None else vision_quick
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": spec.embed_dim,
        "logit_scale_init_value": 2.6592,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": spec.vocab_size,
            "hidden_size": spec.text_width,
            "intermediate_size": 4 * spec.text_width,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "max_position_embeddings": spec.context_length,
            "hidden_act": "quick_gelu" if spec.quick_gelu else "gelu",
            "layer_norm_eps": _eps(spec, "text"),
            "projection_dim": spec.embed_dim,
            "bos_token_id": spec.vocab_size - 2,
            "eos_token_id": spec.vocab_size - 1,
            "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": spec.vision_width,
            "intermediate_size": 4 * spec.vision_width,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "image_size": spec.image_resolution,
            "patch_size": spec.vision_patch_size,
            "num_channels": 3,
            "hidden_act": "quick_gelu" if vision_quick else "gelu",
            "layer_norm_eps": _eps(spec, "vision"),
            "projection_dim": spec.embed_dim,
        },
    }


def preprocessor_config(spec: Any) -> dict[str, Any]:
    """The ``preprocessor_config.json`` (``CLIPImageProcessor``) of clipkit's transform for ``spec``."""
    side = spec.image_resolution
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": getattr(spec, "resize_to", None) or side},
        "resample": _RESAMPLE[getattr(spec, "interpolation", "bicubic")],
        "do_center_crop": True,
        "crop_size": {"height": side, "width": side},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(getattr(spec, "image_mean", CLIP_MEAN)),
        "image_std": list(getattr(spec, "image_std", CLIP_STD)),
        "do_convert_rgb": True,
    }


def to_transformers(model: nn.Module, out: str | os.PathLike[str], *, spec: Any = None, overwrite: bool = False) -> Path:
    """Write ``model`` as a transformers ``CLIPModel`` folder at ``out``; return the folder.

    ``spec`` defaults to the spec ``clipkit.load`` attached to the model.
    Weights are written in float32. Raises ``ExportError`` for a model
    ``CLIPModel`` cannot express (a ResNet, a non-square input, open_clip
    variants such as layer scale or another pooling); nothing is written then.
    An existing ``out`` that holds anything is refused (``ExportError``)
    unless ``overwrite``, which replaces the whole folder once the new one is
    complete.
    """
    spec = model_spec(model, spec)
    _check_expressible(spec)
    tensors = openai_to_transformers({k: v.float() for k, v in model.state_dict().items()})
    with staged(out, overwrite=overwrite) as stage:
        write_safetensors(tensors, stage / "model.safetensors")
        write_json(config(spec), stage / "config.json")
        write_json(preprocessor_config(spec), stage / "preprocessor_config.json")
    return Path(out)
