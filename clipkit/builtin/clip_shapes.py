"""The shape reader for the built-in CLIP families (ResNet and ViT): the OpenAI-layout text tower they share.

Built on the public ``clipkit.shapes`` helpers; only key names and ``.shape``
are read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from clipkit.errors import StateDictError
from clipkit.shapes import OPENAI_LAYOUT_ADVICE, block_count, default_heads, expect, shape, shape_mismatch

#: Keys every OpenAI-layout CLIP has in its text tower; part of both plugins' signatures.
TEXT_SIGNATURE: tuple[str, ...] = ("token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight")


def check_transformer(state_dict: Mapping[str, torch.Tensor], prefix: str, width: int, layers: int) -> None:
    """Check each block's attention and MLP shapes for a transformer of ``width`` (a 4x MLP)."""
    for i in range(layers):
        block = f"{prefix}{i}"
        expect(state_dict, f"{block}.attn.in_proj_weight", (3 * width, width), f"the transformer width is {width}")
        expect(state_dict, f"{block}.mlp.c_fc.weight", (4 * width, width), f"the MLP is 4 x {width} wide")


def text_tower(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Infer the text tower and joint embedding: ``embed_dim``, ``context_length``, ``vocab_size``, ``text_*``.

    Raises ``StateDictError`` naming the key when shapes disagree (for instance
    ``text_projection`` rows that are not the text width).
    """
    vocab_size, width = shape(state_dict, "token_embedding.weight", dims=2)
    context_length, pos_width = shape(state_dict, "positional_embedding", dims=2)
    if pos_width != width:
        raise shape_mismatch(
            "positional_embedding", (context_length, pos_width), (context_length, width),
            f"token_embedding.weight {(vocab_size, width)} says the text width is {width}",
        )
    expect(state_dict, "ln_final.weight", (width,), f"the text width is {width}")
    rows, embed_dim = shape(state_dict, "text_projection", dims=2)
    if rows != width:
        raise shape_mismatch(
            "text_projection", (rows, embed_dim), (width, embed_dim),
            f"its rows must equal the text width {width} (token_embedding.weight is {(vocab_size, width)})",
        )
    layers = block_count(state_dict, "transformer.resblocks.")
    if layers == 0:
        raise StateDictError(f"the state dict has no transformer.resblocks.N text blocks. {OPENAI_LAYOUT_ADVICE}",
                             missing=["transformer.resblocks.0.attn.in_proj_weight"])
    check_transformer(state_dict, "transformer.resblocks.", width, layers)
    scale = shape(state_dict, "logit_scale")
    if math.prod(scale) != 1:
        raise shape_mismatch("logit_scale", scale, (), "it is one number")
    return dict(
        embed_dim=embed_dim,
        context_length=context_length,
        vocab_size=vocab_size,
        text_width=width,
        text_layers=layers,
        text_heads=default_heads(width),
    )
