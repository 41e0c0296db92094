"""CLIP's Vision Transformer image tower (ViT-B/32, ViT-L/14, ... and any other size), with open_clip's variants."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clipkit.errors import ConfigurationError
from clipkit.nn.layers import LayerNorm, Transformer, check_resolution, pair

__all__ = ["AttentionalPooler", "VisionTransformer"]

POOLS: tuple[str, ...] = ("tok", "avg")


class AttentionalPooler(nn.Module):
    """Cross-attend ``queries`` learned queries (``query``, ``[queries, width]``) to the tower's tokens.

    Keys: ``query``, ``attn.*`` (an ``nn.MultiheadAttention`` from ``width`` to
    ``context_width``-wide keys and values), ``ln_q`` and ``ln_k`` (LayerNorms,
    epsilon 1e-5). Returns ``[batch, queries, width]``.
    """

    def __init__(self, width: int, context_width: int, heads: int, queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(queries, width))
        self.attn = nn.MultiheadAttention(width, heads, kdim=context_width, vdim=context_width, batch_first=True)
        self.ln_q = LayerNorm(width)
        self.ln_k = LayerNorm(context_width)
        nn.init.normal_(self.query, std=width**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(x)
        q = self.ln_q(self.query).to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, x, x, need_weights=False)[0]


class VisionTransformer(nn.Module):
    """Patchify with a strided convolution, prepend a class token, run a transformer, pool, project.

    ``input_resolution // patch_size`` patches per side (``input_resolution`` is
    one side, or ``(height, width)`` for a non-square grid); ``output_dim`` is the
    joint embedding width. State dict keys (under ``visual.`` in a CLIP):
    ``conv1.weight``, ``class_embedding``, ``positional_embedding``, ``ln_pre``
    (absent with ``ln_pre=False``), ``transformer.resblocks.N``, ``attn_pool``
    (with ``attn_pool_queries``), ``ln_post``, ``proj``.

    Pooling, as open_clip's: ``pool="tok"`` takes the class token, ``"avg"``
    the mean of the patch tokens; ``ln_post`` normalises the tokens before
    pooling, or the pooled vector with ``final_ln_after_pool``. With
    ``attn_pool_queries`` an ``AttentionalPooler`` (``attn_pool_heads`` heads)
    first maps the tokens to that many ``output_dim``-wide queries, which are
    normalised and then pooled. ``block`` keywords (``mlp_width``,
    ``layer_scale``, ``norm_eps``, ``gelu_approximate``) go to every block;
    ``norm_eps`` also to ``ln_pre`` and ``ln_post``.
    """

    #: kept float32 by ``clipkit.nn.cast_model`` (the reference never halves them)
    fp32_parameters: tuple[str, ...] = ("class_embedding", "positional_embedding")

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
        ln_pre: bool = True,
        pool: str = "tok",
        final_ln_after_pool: bool = False,
        attn_pool_queries: int = 0,
        attn_pool_heads: int = 8,
        **block: Any,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigurationError(f"vision pooling must be one of {POOLS}, got {pool!r}")
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.output_dim = output_dim
        self.pool = pool
        self.final_ln_after_pool = final_ln_after_pool
        eps = block.get("norm_eps", 1e-5)
        rows, cols = (side // patch_size for side in pair(input_resolution))
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(rows * cols + 1, width))
        self.ln_pre = LayerNorm(width, eps=eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(width, layers, heads, quick_gelu=quick_gelu, **block)
        self.attn_pool = (
            AttentionalPooler(output_dim, width, attn_pool_heads, attn_pool_queries) if attn_pool_queries else None
        )
        pool_width = output_dim if attn_pool_queries else width
        self.ln_post = LayerNorm(pool_width, eps=eps)
        self.proj = nn.Parameter(torch.empty(pool_width, output_dim))
        for param in (self.class_embedding, self.positional_embedding, self.proj):
            nn.init.normal_(param, std=width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype images are cast to: the patch convolution's weight dtype."""
        return self.conv1.weight.dtype

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.pool == "tok" else x[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_resolution(x, self.input_resolution)
        x = self.conv1(x.to(self.dtype))
        x = x.flatten(2).transpose(1, 2)  # [batch, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        if self.attn_pool is not None:
            pooled = self._pooled(self.ln_post(self.attn_pool(x)))
        elif self.final_ln_after_pool:
            pooled = self.ln_post(self._pooled(x))
        elif self.pool == "tok":
            pooled = self.ln_post(x[:, 0, :])  # the same as normalising every token, then taking the first
        else:
            pooled = self._pooled(self.ln_post(x))
        return pooled @ self.proj.to(pooled.dtype)
