"""Resizing positional embeddings: the image grid (bicubic, antialiased) and the text length (truncate or extend).

Pure tensor functions on one embedding each; the family plugins decide which
of their tensors to pass (``clipkit.hookspecs.adapt_state_dict``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resize_grid_embedding", "resize_text_embedding"]


def resize_grid_embedding(
    embedding: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], *, leading_tokens: int = 1
) -> torch.Tensor:
    """Resize a ``[leading_tokens + rows * cols, width]`` positional embedding to another ``(rows, cols)`` grid.

    The first ``leading_tokens`` rows (a class or mean token) are kept as they
    are; the grid rows are interpolated bicubic with antialiasing
    (``align_corners=False``), computed in float32 and returned in
    ``embedding``'s dtype: the same numbers as open_clip's ``resize_pos_embed``
    on a float32 embedding. The input is not modified; the same grid returns
    it unchanged.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return embedding
    width = embedding.shape[-1]
    if embedding.shape[0] != leading_tokens + old_grid[0] * old_grid[1]:
        raise ValueError(
            f"embedding has {embedding.shape[0]} rows, not {leading_tokens} + {old_grid[0]}x{old_grid[1]}"
        )
    tokens, grid = embedding[:leading_tokens], embedding[leading_tokens:]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], width).to(embedding.dtype)
    return torch.cat([tokens, grid], dim=0)


def resize_text_embedding(embedding: torch.Tensor, length: int) -> torch.Tensor:
    """Give a ``[context_length, width]`` text positional embedding ``length`` rows.

    Shorter: the first ``length`` rows (truncation). Longer: every trained row
    kept as it is, and each new position a copy of the last trained one. The
    text tower is causal and reads each text at its end token, so a text that
    fit the old length embeds exactly as before; positions past it were never
    trained, and repeating the last one is the choice that invents nothing.
    """
    rows = embedding.shape[0]
    if length <= rows:
        return embedding[:length]
    return torch.cat([embedding, embedding[-1:].expand(length - rows, -1)], dim=0)
