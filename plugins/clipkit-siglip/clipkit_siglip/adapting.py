"""SigLIP at load: another (square) input size, and one tower alone (``clipkit.load(..., image_resolution=, tower=)``).

The patch grid's positions are interpolated as transformers'
``interpolate_pos_encoding=True`` does (bicubic, ``align_corners=False``, no
antialiasing), so the numbers are ``SiglipModel``'s at that size. The text length is refused: SigLIP's text tower
reads the last position of a text padded to the full context, so another
length changes what it reads.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from clipkit.errors import ResizeError
from clipkit_siglip.model import SiglipCLIP
from clipkit_siglip.spec import SiglipSpec

__all__ = ["SiglipImageTower", "SiglipTextTowerOnly", "resize_siglip_state_dict", "split_siglip"]

_POSITIONS = "vision_model.embeddings.position_embedding.weight"


def resize_siglip_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: SiglipSpec, target: SiglipSpec
) -> dict[str, torch.Tensor]:
    """``state_dict`` with the patch positions interpolated for ``target.image_resolution``; the rest passed through."""
    if target.context_length != spec.context_length:
        raise ResizeError(
            f"context_length={target.context_length}: SigLIP's text tower reads the last position of a text padded "
            f"to its full context ({spec.context_length}), so it runs at that length only; load it without "
            "context_length="
        )
    if not isinstance(target.image_resolution, int):
        raise ResizeError(f"image_resolution={target.image_resolution!r}: clipkit-siglip runs square inputs only")
    patch = spec.vision_patch_size
    old, new = spec.image_resolution // patch, target.image_resolution // patch
    if new < 1:
        raise ResizeError(f"image_resolution={target.image_resolution} is smaller than one {patch}px patch")
    adapted = dict(state_dict)
    if new != old and _POSITIONS in adapted:
        adapted[_POSITIONS] = _interpolate(adapted[_POSITIONS], old, new)
    return adapted


def _interpolate(positions: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """``[old*old, width]`` grid positions resized to ``[new*new, width]`` (computed in float32, returned in their dtype)."""
    width = positions.shape[-1]
    grid = positions.float().reshape(1, old, old, width).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new * new, width).to(positions.dtype)


class SiglipImageTower(nn.Module):
    """A SigLIP's image tower alone, with ``logit_scale`` and ``logit_bias``; ``encode_image`` as the full model's."""

    fp32_parameters = ("logit_scale", "logit_bias")

    def __init__(self, model: SiglipCLIP) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.logit_scale = model.logit_scale
        self.logit_bias = model.logit_bias

    @property
    def visual(self) -> nn.Module:
        """The image tower (the reference model's name for it)."""
        return self.vision_model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``[batch, embed_dim]`` (not normalised)."""
        return self.vision_model(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as ``encode_image``."""
        return self.encode_image(images)


class SiglipTextTowerOnly(nn.Module):
    """A SigLIP's text tower alone, with ``logit_scale`` and ``logit_bias``; ``encode_text`` as the full model's."""

    fp32_parameters = ("logit_scale", "logit_bias")

    def __init__(self, model: SiglipCLIP) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.logit_scale = model.logit_scale
        self.logit_bias = model.logit_bias
        self.context_length = model.context_length
        self.vocab_size = model.vocab_size

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features ``[batch, embed_dim]`` (not normalised)."""
        return self.text_model(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same as ``encode_text``."""
        return self.encode_text(tokens)


def split_siglip(model: SiglipCLIP, tower: str) -> nn.Module:
    """The ``"image"`` or ``"text"`` tower of ``model`` (its modules shared, nothing allocated)."""
    return SiglipImageTower(model) if tower == "image" else SiglipTextTowerOnly(model)
