"""CLIP's Vision Transformer image tower (ViT-B/32, ViT-L/14, ... and any other size)."""

from __future__ import annotations

import torch
from torch import nn

from clipkit.nn.layers import LayerNorm, Transformer, check_resolution, pair

__all__ = ["VisionTransformer"]


class VisionTransformer(nn.Module):
    """Patchify with a strided convolution, prepend a class token, run a transformer, project the class token.

    ``input_resolution // patch_size`` patches per side (``input_resolution`` is
    one side, or ``(height, width)`` for a non-square grid); ``output_dim`` is the
    joint embedding width. State dict keys (under ``visual.`` in a CLIP):
    ``conv1.weight``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
    ``transformer.resblocks.N``, ``ln_post``, ``proj``.
    """

    def __init__(
        self,
        input_resolution: int | tuple[int, int],
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        *,
        quick_gelu: bool = True,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.output_dim = output_dim
        rows, cols = (side // patch_size for side in pair(input_resolution))
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(rows * cols + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu=quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))
        for param in (self.class_embedding, self.positional_embedding, self.proj):
            nn.init.normal_(param, std=width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype images are cast to: the patch convolution's weight dtype."""
        return self.conv1.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_resolution(x, self.input_resolution)
        x = self.conv1(x.to(self.dtype))
        x = x.flatten(2).transpose(1, 2)  # [batch, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x[:, 0, :])
        return x @ self.proj
