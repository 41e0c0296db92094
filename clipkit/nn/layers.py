"""Building blocks shared by the towers: fp32 LayerNorm, activations, attention, the transformer.

Parameter names follow OpenAI's CLIP so that ``state_dict()`` keys match the
official checkpoints (``attn.in_proj_weight``, ``mlp.c_fc.weight``, ...).
Attention runs through ``torch.nn.functional.scaled_dot_product_attention``;
the text tower's causal mask is requested with ``is_causal`` instead of being
stored, so no module holds a tensor that is not in its state dict.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.errors import ConfigurationError

__all__ = [
    "Embedding",
    "LayerNorm",
    "LayerScale",
    "QuickGELU",
    "MultiheadSelfAttention",
    "ResidualAttentionBlock",
    "Transformer",
    "cast_model",
]


class LayerNorm(nn.LayerNorm):
    """A LayerNorm that computes in float32 whatever its input's dtype and returns the input's dtype.

    This is the reference's mixed-precision rule: with fp16 activations the
    normalisation statistics are still taken in fp32. ``keep_fp32`` tells the
    loader (and ``cast_model``) to leave its parameters in float32.
    """

    keep_fp32 = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class Embedding(nn.Embedding):
    """An ``nn.Embedding`` that stays float32 when the model is cast to half precision (``keep_fp32``).

    The reference never halves its token embedding (its ``convert_weights``
    halves only convolutions, linear layers, attention and the projections),
    so official half-precision files hold it in float32; the text tower casts
    the rows it looks up. Loading such a file in float16 then copies nothing.
    """

    keep_fp32 = True


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of an input size given as one side (square) or as a pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_resolution(images: torch.Tensor, resolution: int | tuple[int, int]) -> None:
    """Raise ``ConfigurationError`` unless ``images`` are ``resolution`` (one side, or ``(height, width)``)."""
    height, width = pair(resolution)
    if images.shape[-2:] != (height, width):
        raise ConfigurationError(
            f"this model expects {height}x{width} images (height x width), got {tuple(images.shape[-2:])}; "
            "resize with the preprocess transform returned by clipkit.load"
        )


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's CLIP was trained with: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return x * torch.sigmoid(1.702 * x)  # autograd needs the sigmoid's output intact
        # the same values (x * gate == gate * x), in one activation-sized buffer instead of three
        return torch.mul(x, 1.702).sigmoid_().mul_(x)


def activation(quick_gelu: bool, approximate: str = "none") -> nn.Module:
    """Return a fresh ``QuickGELU`` when ``quick_gelu`` is true, else ``nn.GELU(approximate=...)``.

    ``approximate`` is ``"none"`` (the exact erf form) or ``"tanh"``; QuickGELU has no variants.
    """
    if quick_gelu:
        if approximate != "none":
            raise ConfigurationError(f"QuickGELU has no {approximate!r} approximation; use GELU (quick_gelu=False)")
        return QuickGELU()
    if approximate not in ("none", "tanh"):
        raise ConfigurationError(f"GELU approximation must be 'none' or 'tanh', got {approximate!r}")
    return nn.GELU(approximate=approximate)


class LayerScale(nn.Module):
    """Multiply by a learned per-channel ``gamma`` (``[width]``): the residual branch scale of CaiT-style blocks."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.to(x.dtype)


class MultiheadSelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout, computed with SDPA.

    Parameters: ``in_proj_weight`` ``[3*width, width]`` (query, key, value rows
    stacked), ``in_proj_bias`` ``[3*width]`` and ``out_proj`` (a ``Linear``).
    Inputs are batch-first ``[batch, tokens, width]``.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ConfigurationError(f"attention width {width} is not divisible by {heads} heads")
        self.width = width
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.normal_(self.in_proj_weight, std=width**-0.5)
        nn.init.zeros_(self.in_proj_bias)

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class ResidualAttentionBlock(nn.Module):
    """A pre-norm transformer block: ``x + ls_1(attn(ln_1(x)))`` then ``x + ls_2(mlp(ln_2(x)))``.

    ``mlp_width`` is the MLP's hidden width (default ``4 * width``); with
    ``layer_scale`` each branch is scaled by a learned ``gamma`` (keys
    ``ls_1.gamma``, ``ls_2.gamma``), otherwise ``ls_1``/``ls_2`` are identities.
    ``norm_eps`` is both LayerNorms' epsilon; ``quick_gelu`` and
    ``gelu_approximate`` choose the MLP's activation (see ``activation``).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        quick_gelu: bool = True,
        mlp_width: int | None = None,
        layer_scale: bool = False,
        norm_eps: float = 1e-5,
        gelu_approximate: str = "none",
    ) -> None:
        super().__init__()
        hidden = mlp_width or 4 * width
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_1 = LayerNorm(width, eps=norm_eps)
        self.ls_1 = LayerScale(width) if layer_scale else nn.Identity()
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", activation(quick_gelu, gelu_approximate)),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )
        self.ln_2 = LayerNorm(width, eps=norm_eps)
        self.ls_2 = LayerScale(width) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), causal=causal))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of ``layers`` residual attention blocks (``resblocks.N``), causal when ``causal`` is true.

    The text tower is causal (each token sees itself and the tokens before it);
    the vision transformer is not. Keyword arguments after ``causal`` go to every
    ``ResidualAttentionBlock`` (MLP width, layer scale, norm epsilon, GELU form).
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        *,
        quick_gelu: bool = True,
        causal: bool = False,
        **block: Any,
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.heads = heads
        self.causal = causal
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, quick_gelu=quick_gelu, **block) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=self.causal)
        return x


_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def cast_model(model: nn.Module, dtype: torch.dtype, device: torch.device | str | None = None) -> nn.Module:
    """Cast ``model``'s floating tensors to ``dtype`` (and move all to ``device``) in place, keeping norms float32.

    Stays float32 (when ``dtype`` is narrower): every tensor of a LayerNorm, BatchNorm or GroupNorm, of a
    module whose class sets ``keep_fp32 = True`` (clipkit's token ``Embedding``), and each parameter or
    buffer a module names in its ``fp32_parameters`` (CLIP's ``logit_scale``,
    the positional and class embeddings). That is the reference's half
    precision: its ``convert_weights`` halves convolutions, linear layers,
    attention and projections, and the towers cast their inputs to the weights'
    dtype; so an official half-precision file loads in float16 without a copy. Integer buffers (``num_batches_tracked``) keep their
    dtype. Each tensor is converted at most once (dtype and device together)
    and parameters keep their identity, so optimisers and hooks survive.
    """
    if not dtype.is_floating_point:
        raise ConfigurationError(f"cast_model needs a floating dtype such as torch.float16, got {dtype}")
    target_device = torch.device(device) if device is not None else None
    kept_dtype = dtype if dtype.itemsize >= 4 else torch.float32  # "at least float32": float64 stays float64

    def convert(tensor: torch.Tensor, keep: bool) -> torch.Tensor:
        target = (kept_dtype if keep else dtype) if tensor.is_floating_point() else None
        return tensor.to(device=target_device, dtype=target)

    for module in model.modules():
        keep_all = isinstance(module, _NORM_TYPES) or bool(getattr(module, "keep_fp32", False))
        keep_names = set(getattr(module, "fp32_parameters", ()))
        for name, param in list(module._parameters.items()):
            if param is not None:
                converted = convert(param.data, keep_all or name in keep_names)
                if converted.dtype != param.dtype or converted.device != param.device:
                    param.data = converted
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = convert(buffer, keep_all or name in keep_names)
    return model
