"""CLIP ResNet, OpenAI layout: needs visual.attnpool.positional_embedding, visual.layer1.0.conv1.weight + text keys token_embedding.weight, positional_embedding, text_projection, ln_final.weight.

Every hyperparameter is read off tensor shapes: the width from the first
bottleneck, the stage depths from the numbered blocks, the resolution from the
attention pool's positional embedding (output stride 32). The attention pool's
head count follows OpenAI's convention (``width * 32 // 64``) and
``quick_gelu`` defaults to True; both can be overridden through
``clipkit.load(..., vision_heads=..., quick_gelu=False)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clipkit import shapes
from clipkit.builtin.clip_builder import build_clip
from clipkit.builtin.clip_shapes import OPENAI, TEXT_SIGNATURE, text_tower
from clipkit.builtin.clip_specs import ResNetSpec
from clipkit.errors import StateDictError
from clipkit.hookspecs import hookimpl
from clipkit.nn import CLIP, ModifiedResNet

SIGNATURE: tuple[str, ...] = (
    "visual.attnpool.positional_embedding",
    "visual.layer1.0.conv1.weight",
    *TEXT_SIGNATURE,
)


def infer_spec(state_dict: Mapping[str, torch.Tensor]) -> ResNetSpec:
    """Read a ``ResNetSpec`` off an OpenAI-layout ResNet state dict, raising ``StateDictError`` on inconsistent shapes."""
    reading = text_tower(state_dict)
    embed_dim = reading.values["embed_dim"]
    first = shapes.shape(state_dict, "visual.layer1.0.conv1.weight", dims=4)
    width = first[0]
    stem = f"visual.layer1.0.conv1.weight {first} gives width {width}"
    shapes.expect(state_dict, "visual.conv1.weight", (width // 2, 3, 3, 3), stem)
    shapes.expect(state_dict, "visual.conv3.weight", (width, width // 2, 3, 3), stem)
    shapes.expect(state_dict, "visual.layer1.0.conv1.weight", (width, width, 1, 1), "the stem ends with as many channels as the first bottleneck is wide")

    layers = []
    for stage in range(1, 5):
        blocks = shapes.block_count(state_dict, f"visual.layer{stage}.")
        if blocks == 0:
            raise StateDictError(
                f"the state dict has no visual.layer{stage}.N blocks; a CLIP ResNet has four stages. {shapes.OPENAI_LAYOUT_ADVICE}",
                missing=[f"visual.layer{stage}.0.conv1.weight"],
            )
        planes = width * 2 ** (stage - 1)
        shapes.expect(
            state_dict, f"visual.layer{stage}.0.conv3.weight", (planes * 4, planes, 1, 1),
            f"stage {stage} of a width-{width} ResNet has {planes}-wide bottlenecks",
        )
        layers.append(blocks)

    pool_width = width * 32
    side = shapes.square_side(state_dict, "visual.attnpool.positional_embedding", pool_width, "feature-map positions")
    shapes.expect(
        state_dict, "visual.attnpool.c_proj.weight", (embed_dim, pool_width),
        f"it maps the ResNet's {pool_width} features to the joint embedding width {embed_dim} of the text projection",
    )
    reading.shape("image_resolution", 32 * side, "visual.attnpool.positional_embedding")
    reading.shape("vision_width", width, "visual.layer1.0.conv1.weight")
    reading.shape("vision_layers", tuple(layers), "visual.layerN.M")
    reading.convention("vision_heads", shapes.default_heads(pool_width), f"64-wide attention-pool heads ({OPENAI})")
    reading.shape("family", "resnet", "visual.attnpool.positional_embedding and visual.layerN")
    return ResNetSpec(**reading.spec_kwargs())


@hookimpl
def detect_architecture(state_dict: Mapping[str, torch.Tensor]) -> ResNetSpec | None:
    """Claim an OpenAI-layout CLIP ResNet state dict and describe it; ``None`` for anything else."""
    if not shapes.has_keys(state_dict, SIGNATURE):
        return None
    return infer_spec(state_dict)


@hookimpl
def build_model(spec: object) -> CLIP | None:
    """Build the CLIP ResNet that ``spec`` describes (on the current default device), or ``None`` for other families."""
    if not isinstance(spec, ResNetSpec) or spec.family != "resnet":
        return None
    visual = ModifiedResNet(
        layers=spec.vision_layers,
        output_dim=spec.embed_dim,
        heads=spec.vision_heads,
        input_resolution=spec.image_resolution,
        width=spec.vision_width,
    )
    return build_clip(visual, spec)
