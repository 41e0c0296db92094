"""CLIP ViT, OpenAI layout: needs visual.proj, 4-D visual.conv1.weight, visual.class_embedding + text keys token_embedding.weight, positional_embedding, text_projection, ln_final.weight.

Every size is read off tensor shapes: the patch size from the patch
convolution, the resolution from the positional embedding's grid, the depths
from the numbered blocks, the MLP widths, and open_clip's variants by their
keys (layer scale, no ``ln_pre``, an attentional pooler). What shapes cannot
show follows OpenAI's conventions (64-wide heads; open_clip's head counts at its
large widths; QuickGELU), each recorded as such and overridable through
``clipkit.load(..., vision_heads=..., quick_gelu=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from clipkit import shapes
from clipkit.builtin.clip_builder import build_clip
from clipkit.builtin.clip_shapes import OPENAI, TEXT_SIGNATURE, Reading, text_tower, transformer, vision_heads
from clipkit.builtin.clip_specs import ViTSpec
from clipkit.hookspecs import hookimpl
from clipkit.nn import CLIP, VisionTransformer

SIGNATURE: tuple[str, ...] = ("visual.proj", "visual.conv1.weight", "visual.class_embedding", *TEXT_SIGNATURE)


def _is_vit(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return shapes.has_keys(state_dict, SIGNATURE) and len(state_dict["visual.conv1.weight"].shape) == 4


def infer_spec(state_dict: Mapping[str, torch.Tensor]) -> ViTSpec:
    """Read a ``ViTSpec`` off an OpenAI-layout ViT state dict, raising ``StateDictError`` on inconsistent shapes.

    Every field carries its provenance: sizes and variants read off the shapes,
    the rest OpenAI's conventions (open_clip's head counts at its large widths).
    """
    reading = text_tower(state_dict)
    embed_dim = reading.values["embed_dim"]
    conv = shapes.shape(state_dict, "visual.conv1.weight")
    width, channels, patch, patch_w = conv
    if channels != 3 or patch != patch_w:
        raise shapes.shape_mismatch(
            "visual.conv1.weight", conv, (width, 3, patch, patch),
            "the patch embedding takes 3-channel images with square patches",
        )
    shapes.expect(state_dict, "visual.class_embedding", (width,), f"visual.conv1.weight {conv} gives width {width}")
    _grid(reading, state_dict, width, patch)
    reading.shape("vision_width", width, "visual.conv1.weight")
    reading.shape("vision_patch_size", patch, "visual.conv1.weight")
    ln_pre = "visual.ln_pre.weight" in state_dict
    if ln_pre:
        shapes.expect(state_dict, "visual.ln_pre.weight", (width,), f"the vision width is {width}")
    reading.shape("vision_ln_pre", ln_pre, "visual.ln_pre.weight")
    transformer(reading, state_dict, "visual.transformer.resblocks.", "vision", width)
    heads, why = vision_heads(width)
    reading.convention("vision_heads", heads, why)
    pool_width = _attentional_pool(reading, state_dict, width, embed_dim)
    shapes.expect(state_dict, "visual.ln_post.weight", (pool_width,), f"the pooled features are {pool_width} wide")
    shapes.expect(
        state_dict, "visual.proj", (pool_width, embed_dim),
        f"it maps the pooled {pool_width} features to the joint embedding width {embed_dim} of the text projection",
    )
    reading.convention("vision_pool", "tok", f"the class token ({OPENAI})")
    reading.convention("vision_final_ln_after_pool", False, f"ln_post before pooling ({OPENAI})")
    reading.convention("vision_norm_eps", 1e-5, f"LayerNorm epsilon ({OPENAI})")
    reading.convention("vision_gelu_approximate", "none", "exact GELU (when quick_gelu is False)")
    reading.shape("family", "vit", "visual.conv1.weight (a 4-D patch embedding) and visual.class_embedding")
    return ViTSpec(**reading.spec_kwargs())


def _grid(reading: Reading, state_dict: Mapping[str, torch.Tensor], width: int, patch: int) -> None:
    """Read the resolution off the position table: a square grid is a fact; any other is unsettled by the shapes.

    ``rows - 1`` cells that are not a square number are some ``h x w`` grid the
    shapes cannot tell; the resolution is recorded as ``UNSETTLED`` (a ``1 x
    cells`` placeholder) for a config or the caller's ``image_resolution`` to settle.
    """
    key = "visual.positional_embedding"
    rows = shapes.shape(state_dict, key, dims=2)[0]
    cells = rows - 1
    if cells < 2 or math.isqrt(cells) ** 2 == cells:
        grid = shapes.square_side(state_dict, key, width, "patches")
        reading.shape("image_resolution", patch * grid, key)
        return
    shapes.expect(state_dict, key, (rows, width), f"its width should be {width}")
    reading.unsettled(
        "image_resolution", (patch, patch * cells),
        f"{key} has {rows} rows: {cells} patches plus the class token, not a square grid; its (height, width) in "
        f"patches of {patch} pixels is not shown by the shapes. Pass clipkit.load(..., image_resolution=(h, w)) with "
        f"(h // {patch}) * (w // {patch}) == {cells}, or load it with the config that says it "
        "(open_clip_config.json's model_cfg.vision_cfg.image_size)",
    )


def _attentional_pool(reading: Reading, state_dict: Mapping[str, torch.Tensor], width: int, embed_dim: int) -> int:
    """Read open_clip's attentional pooler (``visual.attn_pool.*``), if any; return the pooled features' width."""
    if "visual.attn_pool.query" not in state_dict:
        reading.shape("vision_attn_pool_queries", 0, "no visual.attn_pool.query")
        reading.unused("vision_attn_pool_heads", 8, "no attentional pooler")
        return width
    queries, query_width = shapes.shape(state_dict, "visual.attn_pool.query", dims=2)
    if query_width != embed_dim:
        raise shapes.shape_mismatch("visual.attn_pool.query", (queries, query_width), (queries, embed_dim),
                                    f"the attentional pooler's queries are the joint embedding width {embed_dim}")
    reading.shape("vision_attn_pool_queries", queries, "visual.attn_pool.query")
    reading.convention("vision_attn_pool_heads", 8, "open_clip's default attn_pooler_heads")
    return embed_dim


@hookimpl
def detect_architecture(state_dict: Mapping[str, torch.Tensor]) -> ViTSpec | None:
    """Claim an OpenAI-layout CLIP ViT state dict and describe it; ``None`` for anything else."""
    if not _is_vit(state_dict):
        return None
    return infer_spec(state_dict)


def build_vit_clip(spec: ViTSpec, *, vision_quick_gelu: bool | None = None) -> CLIP:
    """Construct the ViT CLIP ``spec`` describes on the current default device (for plugins mapping other layouts).

    ``vision_quick_gelu`` sets the image tower's activation when it differs
    from the text tower's (``spec.quick_gelu``).
    """
    visual = VisionTransformer(
        input_resolution=spec.image_resolution,
        patch_size=spec.vision_patch_size,
        width=spec.vision_width,
        layers=spec.vision_layers,
        heads=spec.vision_heads,
        output_dim=spec.embed_dim,
        quick_gelu=spec.quick_gelu if vision_quick_gelu is None else vision_quick_gelu,
        **spec.vision_options(),
    )
    return build_clip(visual, spec)


@hookimpl
def build_model(spec: object) -> CLIP | None:
    """Build the CLIP ViT that ``spec`` describes (on the current default device), or ``None`` for other families."""
    if not isinstance(spec, ViTSpec) or spec.family != "vit":
        return None
    return build_vit_clip(spec)
