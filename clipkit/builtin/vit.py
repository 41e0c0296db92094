"""CLIP ViT, OpenAI layout: needs visual.proj, 4-D visual.conv1.weight, visual.class_embedding + text keys token_embedding.weight, positional_embedding, text_projection, ln_final.weight.

Every hyperparameter is read off tensor shapes: the patch size from the patch
convolution, the resolution from the positional embedding's grid, the depths
from the numbered blocks. Head counts follow OpenAI's 64-wide convention and
``quick_gelu`` defaults to True; both can be overridden through
``clipkit.load(..., vision_heads=..., quick_gelu=False)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clipkit import shapes
from clipkit.builtin.clip_builder import build_clip
from clipkit.builtin.clip_shapes import TEXT_SIGNATURE, check_transformer, text_tower
from clipkit.builtin.clip_specs import ViTSpec
from clipkit.errors import StateDictError
from clipkit.hookspecs import hookimpl
from clipkit.nn import CLIP, VisionTransformer

SIGNATURE: tuple[str, ...] = ("visual.proj", "visual.conv1.weight", "visual.class_embedding", *TEXT_SIGNATURE)


def _is_vit(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return shapes.has_keys(state_dict, SIGNATURE) and len(state_dict["visual.conv1.weight"].shape) == 4


def infer_spec(state_dict: Mapping[str, torch.Tensor]) -> ViTSpec:
    """Read a ``ViTSpec`` off an OpenAI-layout ViT state dict, raising ``StateDictError`` on inconsistent shapes."""
    text = text_tower(state_dict)
    conv = shapes.shape(state_dict, "visual.conv1.weight")
    width, channels, patch, patch_w = conv
    if channels != 3 or patch != patch_w:
        raise shapes.shape_mismatch(
            "visual.conv1.weight", conv, (width, 3, patch, patch),
            "the patch embedding takes 3-channel images with square patches",
        )
    shapes.expect(state_dict, "visual.class_embedding", (width,), f"visual.conv1.weight {conv} gives width {width}")
    grid = shapes.square_side(state_dict, "visual.positional_embedding", width, "patches")
    shapes.expect(state_dict, "visual.ln_pre.weight", (width,), f"the vision width is {width}")
    shapes.expect(state_dict, "visual.ln_post.weight", (width,), f"the vision width is {width}")
    shapes.expect(
        state_dict, "visual.proj", (width, text["embed_dim"]),
        f"it maps the vision width {width} to the joint embedding width {text['embed_dim']} of text_projection",
    )
    layers = shapes.block_count(state_dict, "visual.transformer.resblocks.")
    if layers == 0:
        raise StateDictError(
            f"the state dict has no visual.transformer.resblocks.N blocks. {shapes.OPENAI_LAYOUT_ADVICE}",
            missing=["visual.transformer.resblocks.0.attn.in_proj_weight"],
        )
    check_transformer(state_dict, "visual.transformer.resblocks.", width, layers)
    return ViTSpec(
        image_resolution=patch * grid,
        vision_width=width,
        vision_layers=layers,
        vision_heads=shapes.default_heads(width),
        vision_patch_size=patch,
        **text,
    )


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
    )
    return build_clip(visual, spec)


@hookimpl
def build_model(spec: object) -> CLIP | None:
    """Build the CLIP ViT that ``spec`` describes (on the current default device), or ``None`` for other families."""
    if not isinstance(spec, ViTSpec) or spec.family != "vit":
        return None
    return build_vit_clip(spec)
