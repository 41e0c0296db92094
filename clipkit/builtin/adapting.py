"""Adapting the built-in families at load: ViT and ResNet at another input size, any text length, one tower.

ViT: the patch grid of ``visual.positional_embedding`` is interpolated (class
token kept); the size must be a multiple of the patch size and may be a
``(height, width)`` pair. ResNet: the attention pool's spatial embedding
(``visual.attnpool.positional_embedding``, mean token kept) likewise, at
multiples of 32 (the tower's output stride). Text: ``positional_embedding``
truncated or extended (``clipkit.nn.resize_text_embedding``). Any
``clipkit.nn.CLIP`` is cut into one tower by ``clipkit.nn.split_tower``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clipkit.builtin.clip_specs import CLIPSpec, ResNetSpec, ViTSpec
from clipkit.errors import ConfigurationError, ResizeError
from clipkit.hookspecs import hookimpl
from clipkit.nn import CLIP, resize_grid_embedding, resize_text_embedding, split_tower
from clipkit.nn.layers import pair
from clipkit.spec import UNSETTLED, ArchSpec

#: per built-in family: the image positional embedding's key and the pixels per grid cell
_IMAGE_GRIDS: dict[str, str] = {"vit": "visual.positional_embedding", "resnet": "visual.attnpool.positional_embedding"}


def _stride(spec: CLIPSpec) -> int:
    return spec.vision_patch_size if isinstance(spec, ViTSpec) else 32


def _grid(spec: CLIPSpec, stride: int) -> tuple[int, int]:
    rows, cols = pair(spec.image_resolution)
    if rows % stride or cols % stride:
        what = f"the patch size {stride}" if isinstance(spec, ViTSpec) else "32 (the ResNet's output stride)"
        raise ResizeError(
            f"image_resolution={spec.image_resolution!r} is not a multiple of {what}; "
            f"choose sides such as {rows // stride * stride or stride} or {(rows // stride + 1) * stride}"
        )
    return rows // stride, cols // stride


def _settle_grid(spec: CLIPSpec, target: CLIPSpec, grid: tuple[int, int], stride: int) -> None:
    """The caller's ``image_resolution`` for a grid the shapes left unsettled must have the table's cell count."""
    rows, cols = _grid(spec, stride)
    cells = rows * cols
    if grid[0] * grid[1] != cells:
        raise ConfigurationError(
            f"image_resolution={target.image_resolution!r} gives a {grid[0]}x{grid[1]} grid of {stride}-pixel "
            f"patches, but the position table has {cells} patches (not a square grid, so it cannot be resized "
            f"from an unknown (h, w)); pass an image_resolution whose grid has {cells} patches"
        )


def resize_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    spec: CLIPSpec,
    target: CLIPSpec,
    *,
    image_key: str,
    text_key: str = "positional_embedding",
) -> dict[str, torch.Tensor]:
    """``state_dict`` with the image grid embedding at ``image_key`` and the text one at ``text_key`` resized for ``target``.

    The keys default to OpenAI's layout; a plugin with another layout passes
    its own. Entries the change does not concern are passed through (not
    read). Raises ``ResizeError`` for a size that is not a multiple of the
    grid's stride.
    """
    adapted = dict(state_dict)
    stride = _stride(spec)
    new_grid = _grid(target, stride)
    if spec.provenance_of("image_resolution").source == UNSETTLED:  # the caller's size settles the grid: no resize
        _settle_grid(spec, target, new_grid, stride)
    elif image_key in adapted and new_grid != _grid(spec, stride):
        adapted[image_key] = resize_grid_embedding(adapted[image_key], _grid(spec, stride), new_grid)
    if text_key in adapted and target.context_length != spec.context_length:
        adapted[text_key] = resize_text_embedding(adapted[text_key], target.context_length)
    return adapted


@hookimpl
def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: ArchSpec, target: ArchSpec
) -> dict[str, torch.Tensor] | None:
    """Resize a built-in ViT's or ResNet's positional embeddings for ``target``; ``None`` for other families."""
    if type(spec) not in (ViTSpec, ResNetSpec) or spec.family not in _IMAGE_GRIDS:
        return None
    return resize_clip_state_dict(state_dict, spec, target, image_key=_IMAGE_GRIDS[spec.family])


@hookimpl(trylast=True)
def select_tower(model: torch.nn.Module, tower: str) -> torch.nn.Module | None:
    """Cut one tower out of any ``clipkit.nn.CLIP`` (``None`` for other models)."""
    if not isinstance(model, CLIP):
        return None
    return split_tower(model, tower)
