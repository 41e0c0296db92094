"""Renaming a transformers ``CLIPModel`` state dict into OpenAI's CLIP layout: a pure function over keys and tensors.

transformers keeps separate ``q_proj``/``k_proj``/``v_proj`` linear layers and
``nn.Linear`` projections (``[embed, width]``); OpenAI's layout (clipkit's
built-in model) stacks the three into one ``in_proj_weight`` and stores the
projections as ``[width, embed]`` matrices. Everything else is a rename.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["SIGNATURE", "hf_to_openai", "is_hf_clip"]

#: Keys every transformers ``CLIPModel`` state dict has; the plugin claims a state dict only when all are present.
SIGNATURE: tuple[str, ...] = (
    "text_model.embeddings.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight",
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.position_embedding.weight",
    "vision_model.embeddings.class_embedding",
    "visual_projection.weight",
    "text_projection.weight",
)

_RENAMED: dict[str, str] = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: transformers' spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}

#: ``nn.Linear`` weights ``[embed, width]`` that OpenAI stores as ``[width, embed]`` matrices.
_TRANSPOSED: dict[str, str] = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}

_TOWERS: dict[str, str] = {
    "text_model.encoder.layers.": "transformer.resblocks.",
    "vision_model.encoder.layers.": "visual.transformer.resblocks.",
}

_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)

_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")


def is_hf_clip(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state_dict`` has every key of a transformers ``CLIPModel`` (both towers and both projections)."""
    return all(key in state_dict for key in SIGNATURE)


def hf_to_openai(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return ``state_dict`` (transformers ``CLIPModel`` keys) renamed into OpenAI's CLIP layout.

    Per block, ``q_proj``/``k_proj``/``v_proj`` are concatenated (in that order)
    into ``attn.in_proj_weight``/``in_proj_bias``; ``self_attn.out_proj``,
    ``layer_norm1``/``layer_norm2`` and ``mlp.fc1``/``mlp.fc2`` become
    ``attn.out_proj``, ``ln_1``/``ln_2`` and ``mlp.c_fc``/``mlp.c_proj``; the
    embeddings, ``pre_layrnorm``, ``post_layernorm`` and ``final_layer_norm``
    become ``visual.conv1``, ``visual.class_embedding``, the two
    ``positional_embedding``s, ``visual.ln_pre``, ``visual.ln_post`` and
    ``ln_final``; the projection weights are transposed (views, no copy) into
    ``visual.proj`` and ``text_projection``; ``position_ids`` buffers are
    dropped. A key it does not know is kept unchanged (and so is a block's
    q/k/v when one of the three is missing), so strict loading names it. The
    input is not modified; only the q/k/v concatenation copies data.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        if key.endswith("embeddings.position_ids"):
            continue
        if key in _RENAMED:
            out[_RENAMED[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t()
            continue
        tower = next((hf for hf in _TOWERS if key.startswith(hf)), None)
        if tower is None:
            out[key] = value
            continue
        index, _, rest = key[len(tower) :].partition(".")
        block = f"{_TOWERS[tower]}{index}."
        match = _QKV.fullmatch(rest)
        if match:
            qkv.setdefault((block, match[2]), {})[match[1]] = (key, value)
            continue
        for hf_name, openai_name in _BLOCK_RENAMES:
            if rest.startswith(hf_name):
                out[block + openai_name + rest[len(hf_name) :]] = value
                break
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts[name][1] for name in "qkv"])
        else:
            out.update(dict(parts.values()))
    return out
