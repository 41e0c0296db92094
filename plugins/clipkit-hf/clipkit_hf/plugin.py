"""transformers-format CLIP (CLIPModel): claims state dicts with text_model.embeddings.token_embedding.weight, vision_model.embeddings.patch_embedding.weight, visual_projection.weight and text_projection.weight.

This module is the plugin clipkit registers through the ``clipkit`` entry point
``hf``. It reads the architecture off the tensor shapes (and ``config.json``
beside the weights for the activation and head counts) and builds clipkit's own
ViT CLIP, whose ``load_state_dict`` pre-hook renames transformers' keys into
OpenAI's layout on the way in.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipkit import hookimpl
from clipkit.builtin.adapting import resize_clip_state_dict
from clipkit.builtin.vit import build_vit_clip
from clipkit.nn import CLIP, split_tower
from clipkit_hf.convert import SIGNATURE, hf_to_openai, is_hf_clip
from clipkit_hf.preprocess import hf_transform
from clipkit_hf.spec import HFCLIPSpec, infer_spec, read_config


@hookimpl
def detect_architecture(state_dict: Mapping[str, torch.Tensor], path: Path | None) -> HFCLIPSpec | None:
    """Claim a transformers ``CLIPModel`` state dict and describe it; ``None`` for any other layout."""
    if not is_hf_clip(state_dict):
        return None
    return infer_spec(state_dict, read_config(path), path)


@hookimpl
def make_transform(spec: Any) -> Any:
    """transformers' ``CLIPImageProcessor`` pipeline for an ``HFCLIPSpec`` (``None`` for other specs)."""
    if not isinstance(spec, HFCLIPSpec):
        return None
    return hf_transform(spec)


@hookimpl
def build_model(spec: Any) -> CLIP | None:
    """Build clipkit's ViT CLIP for an ``HFCLIPSpec`` (``None`` for other specs), ready to load transformers keys."""
    if not isinstance(spec, HFCLIPSpec):
        return None
    model = build_vit_clip(spec, vision_quick_gelu=spec.vision_activation_is_quick_gelu)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = spec.layer_norm_eps
    model.register_load_state_dict_pre_hook(remap_transformers_keys)
    return model


def remap_transformers_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook: rename a transformers-layout state dict in place into OpenAI's layout.

    Only a state dict carrying transformers' keys is touched, so the model's own
    ``state_dict()`` (already in OpenAI's layout) loads back unchanged.
    """
    if prefix + SIGNATURE[0] not in state_dict:
        return
    own = {key[len(prefix):]: state_dict.pop(key) for key in list(state_dict) if key.startswith(prefix)}
    state_dict.update({prefix + key: value for key, value in hf_to_openai(own).items()})


#: transformers' key prefixes of the tower that a tower-only load leaves out
_OTHER_TOWER: dict[str, tuple[str, ...]] = {
    "image": ("text_model.", "text_projection."),
    "text": ("vision_model.", "visual_projection."),
}


@hookimpl
def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: Any, target: Any
) -> dict[str, torch.Tensor] | None:
    """Resize the position embeddings of a transformers-layout state dict for ``target`` (another size or length)."""
    if not isinstance(spec, HFCLIPSpec):
        return None
    return resize_clip_state_dict(
        state_dict, spec, target,
        image_key="vision_model.embeddings.position_embedding.weight",
        text_key="text_model.embeddings.position_embedding.weight",
    )


@hookimpl
def select_tower(model: nn.Module, spec: Any, tower: str) -> nn.Module | None:
    """One tower of an ``HFCLIPSpec`` model, loading from transformers' keys and leaving the other tower's unread."""
    if not isinstance(spec, HFCLIPSpec):
        return None
    part = split_tower(model, tower)
    part.register_load_state_dict_pre_hook(functools.partial(remap_one_tower, drop=_OTHER_TOWER[tower]))
    return part


def remap_one_tower(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any, drop: tuple[str, ...]) -> None:
    """``load_state_dict`` pre-hook of a tower: drop the other tower's transformers keys (unread), rename the rest."""
    if prefix + SIGNATURE[0] not in state_dict:
        return
    own = {key[len(prefix):]: state_dict.pop(key) for key in list(state_dict) if key.startswith(prefix)}
    kept = {key: value for key, value in own.items() if not key.startswith(drop)}
    state_dict.update({prefix + key: value for key, value in hf_to_openai(kept).items()})
