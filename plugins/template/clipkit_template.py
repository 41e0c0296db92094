"""Mean-pool CLIP (template plugin): claims state dicts with visual.patch.weight, visual.positional_embedding and token_embedding.weight.

A deliberately tiny dual encoder, to show every part a clipkit plugin needs:

- ``MeanPoolSpec``: the architecture as a frozen attrs ``ArchSpec`` subclass;
- ``detect_architecture``: claim the plugin's own key signature, read every size off shapes
  with ``clipkit.shapes`` (which raises ``StateDictError`` naming a key that does not add up);
- ``build_model``: build the model for the plugin's own spec (clipkit calls it on the meta device);
- ``MeanPoolCLIP``: ``encode_image``, ``encode_text``, ``forward`` and the attributes of the reference model.

The image encoder embeds each patch, adds its position and averages; the text
encoder averages token plus position embeddings. clipkit's default transform
(resize, crop to ``image_resolution``, CLIP's normalisation) serves the images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import torch
from torch import nn

import clipkit
from clipkit import shapes
from clipkit.spec import Provenance, preprocessing_conventions

#: Keys this plugin's checkpoints have and no other layout has all of: claim nothing else.
SIGNATURE = ("visual.patch.weight", "visual.positional_embedding", "token_embedding.weight", "positional_embedding")

#: Appended to every shape error: what the user can do about a checkpoint of this layout that does not add up.
ADVICE = "The checkpoint is damaged or not a mean-pool CLIP; save it again from MeanPoolCLIP.state_dict()."


@attrs.frozen(kw_only=True)
class MeanPoolSpec(clipkit.ArchSpec):
    """The mean-pool CLIP architecture: everything ``build_model`` needs, all read off the checkpoint's shapes."""

    family: str = "mean-pool"
    patch_size: int
    embed_dim: int
    vocab_size: int
    context_length: int


class PatchMeanEncoder(nn.Module):
    """Image tower: a strided convolution embeds each patch; position embeddings are added; patches are averaged."""

    def __init__(self, resolution: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.input_resolution = resolution
        self.patch = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.positional_embedding = nn.Parameter(torch.randn((resolution // patch_size) ** 2, embed_dim) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch(images.to(self.patch.weight.dtype)).flatten(2).transpose(1, 2)  # [batch, patches, embed]
        return (patches + self.positional_embedding).mean(dim=1)


class MeanPoolCLIP(nn.Module):
    """A dual encoder with the reference model's interface (``visual.input_resolution``, ``context_length``, ``vocab_size``)."""

    def __init__(self, spec: MeanPoolSpec) -> None:
        super().__init__()
        self.visual = PatchMeanEncoder(spec.image_resolution, spec.patch_size, spec.embed_dim)
        self.token_embedding = nn.Embedding(spec.vocab_size, spec.embed_dim)
        self.positional_embedding = nn.Parameter(torch.randn(spec.context_length, spec.embed_dim) * 0.01)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))
        self.context_length = spec.context_length
        self.vocab_size = spec.vocab_size

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[batch, 3, R, R]`` images to ``[batch, embed_dim]`` features."""
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, n]`` token ids (``n <= context_length``) to ``[batch, embed_dim]`` features."""
        return (self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]).mean(dim=1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)``: scaled cosine similarities and their transpose."""
        image = nn.functional.normalize(self.encode_image(images), dim=-1)
        text = nn.functional.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.exp() * image @ text.t()
        return logits, logits.t()


@clipkit.hookimpl
def detect_architecture(state_dict: Mapping[str, torch.Tensor]) -> MeanPoolSpec | None:
    """Claim state dicts carrying this plugin's signature keys; answer ``None`` for everything else."""
    if not shapes.has_keys(state_dict, SIGNATURE):
        return None
    embed_dim, _, patch_size, _ = shapes.shape(state_dict, "visual.patch.weight", dims=4, advice=ADVICE)
    patches, _ = shapes.shape(state_dict, "visual.positional_embedding", dims=2, advice=ADVICE)
    side = math.isqrt(patches)
    shapes.expect(state_dict, "visual.positional_embedding", (side * side, embed_dim),
                  f"one row per patch of a square image, {embed_dim} wide", advice=ADVICE)
    vocab_size, _ = shapes.shape(state_dict, "token_embedding.weight", dims=2, advice=ADVICE)
    context_length, _ = shapes.shape(state_dict, "positional_embedding", dims=2, advice=ADVICE)
    shapes.expect(state_dict, "positional_embedding", (context_length, embed_dim),
                  f"visual.patch.weight says the embedding is {embed_dim} wide", advice=ADVICE)
    read_from = {"image_resolution": "visual.positional_embedding", "patch_size": "visual.patch.weight",
                 "embed_dim": "visual.patch.weight", "vocab_size": "token_embedding.weight",
                 "context_length": "positional_embedding", "family": "the SIGNATURE keys"}
    return MeanPoolSpec(
        image_resolution=patch_size * side,
        patch_size=patch_size,
        embed_dim=embed_dim,
        vocab_size=vocab_size,
        context_length=context_length,
        provenance={**{name: Provenance.shapes(key) for name, key in read_from.items()},
                    **preprocessing_conventions("CLIP's preprocessing, clipkit's default transform")},
    )


@clipkit.hookimpl
def build_model(spec: clipkit.ArchSpec) -> MeanPoolCLIP | None:
    """Build the model for a ``MeanPoolSpec``; ``None`` for any other family's spec."""
    if not isinstance(spec, MeanPoolSpec):
        return None
    return MeanPoolCLIP(spec)
