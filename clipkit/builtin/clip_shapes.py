"""The shape reader for the built-in CLIP families (ResNet and ViT): the OpenAI-layout text tower they share.

Built on the public ``clipkit.shapes`` helpers; only key names and ``.shape``
are read. A ``Reading`` collects each field's value with its provenance: read
off a shape, or a convention the shapes cannot show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from clipkit.errors import StateDictError
from clipkit.shapes import OPENAI_LAYOUT_ADVICE, block_count, default_heads, expect, shape, shape_mismatch
from clipkit.spec import Provenance, preprocessing_conventions

#: Keys every OpenAI-layout CLIP has in its text tower; part of both plugins' signatures.
TEXT_SIGNATURE: tuple[str, ...] = ("token_embedding.weight", "positional_embedding", "ln_final.weight")

#: open_clip's vision head widths at the widths where they are not 64 (ViT-H, -g, -bigG, -e)
OPEN_CLIP_HEAD_WIDTHS: dict[int, int] = {1280: 80, 1408: 88, 1664: 104, 1792: 112}

OPENAI = "OpenAI's convention"


class Reading:
    """Spec field values with their provenance, gathered while reading a state dict."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.provenance: dict[str, Provenance] = {}

    def shape(self, name: str, value: Any, key: str) -> None:
        """Record ``name = value`` as read off tensor ``key`` (its shape, presence or absence)."""
        self.values[name] = value
        self.provenance[name] = Provenance.shapes(key)

    def convention(self, name: str, value: Any, why: str) -> None:
        """Record ``name = value`` as assumed: ``why`` names the convention."""
        self.values[name] = value
        self.provenance[name] = Provenance.convention(why)

    def unused(self, name: str, value: Any, why: str) -> None:
        """Record ``name = value`` as not affecting this model (``why``)."""
        self.values[name] = value
        self.provenance[name] = Provenance.unused(why)

    def unsettled(self, name: str, value: Any, why: str) -> None:
        """Record ``name = value`` as one of several values the shapes allow: a config or the caller must settle it."""
        self.values[name] = value
        self.provenance[name] = Provenance.unsettled(why)

    def spec_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for the spec class: every value plus ``provenance``."""
        return {**self.values, "provenance": dict(self.provenance)}


def vision_heads(width: int) -> tuple[int, str]:
    """The head count a ViT of ``width`` most likely has, and why: open_clip's configs at its large widths, else 64-wide."""
    head_width = OPEN_CLIP_HEAD_WIDTHS.get(width)
    if head_width:
        return width // head_width, f"open_clip's configs at width {width}: {width // head_width} heads of {head_width}"
    return default_heads(width), f"64-wide heads ({OPENAI})"


def read_conventions(reading: Reading) -> None:
    """Record the conventions every built-in spec starts from: OpenAI's activation, text pooling and preprocessing."""
    reading.convention("quick_gelu", True, f"QuickGELU ({OPENAI}; open_clip's own models mostly use GELU)")
    reading.convention("text_causal", True, f"causal text attention ({OPENAI})")
    reading.convention("text_pool", "argmax", f"read at the highest token id, the end-of-text ({OPENAI})")
    reading.convention("text_norm_eps", 1e-5, f"LayerNorm epsilon ({OPENAI})")
    reading.convention("text_gelu_approximate", "none", "exact GELU (when quick_gelu is False)")
    reading.provenance.update(preprocessing_conventions("OpenAI's preprocessing"))
    reading.unused("text_eos_id", None, "only text_pool 'eos' uses it")


def mlp_width(state_dict: Mapping[str, torch.Tensor], prefix: str, width: int, layers: int) -> int:
    """The MLP's hidden width, the same in every block of the transformer at ``prefix``, each checked."""
    hidden = shape(state_dict, f"{prefix}0.mlp.c_fc.weight", dims=2)[0]
    for i in range(layers):
        block = f"{prefix}{i}"
        expect(state_dict, f"{block}.attn.in_proj_weight", (3 * width, width), f"the transformer width is {width}")
        expect(state_dict, f"{block}.mlp.c_fc.weight", (hidden, width), f"block 0's MLP is {hidden} wide")
        expect(state_dict, f"{block}.mlp.c_proj.weight", (width, hidden), f"block 0's MLP is {hidden} wide")
    return hidden


def layer_scale(state_dict: Mapping[str, torch.Tensor], prefix: str, width: int, layers: int) -> bool:
    """Whether the blocks at ``prefix`` have layer scale (``ls_1.gamma``, ``ls_2.gamma``): all of them or none."""
    found = [f"{prefix}{i}.ls_1.gamma" in state_dict for i in range(layers)]
    if any(found):
        for i in range(layers):
            for name in ("ls_1", "ls_2"):
                expect(state_dict, f"{prefix}{i}.{name}.gamma", (width,), "every block has layer scale or none")
    return any(found)


def transformer(reading: Reading, state_dict: Mapping[str, torch.Tensor], prefix: str, tower: str, width: int) -> None:
    """Read a transformer's depth, MLP width and layer scale into ``{tower}_layers``, ``_mlp_width``, ``_layer_scale``."""
    layers = block_count(state_dict, prefix)
    if layers == 0:
        raise StateDictError(f"the state dict has no {prefix}N blocks. {OPENAI_LAYOUT_ADVICE}",
                             missing=[f"{prefix}0.attn.in_proj_weight"])
    reading.shape(f"{tower}_layers", layers, f"{prefix}N")
    reading.shape(f"{tower}_mlp_width", mlp_width(state_dict, prefix, width, layers), f"{prefix}0.mlp.c_fc.weight")
    reading.shape(f"{tower}_layer_scale", layer_scale(state_dict, prefix, width, layers), f"{prefix}0.ls_1.gamma")


def _text_projection(state_dict: Mapping[str, torch.Tensor], width: int) -> tuple[str, int, str]:
    """The text projection's kind, the joint embedding width and the key that shows it."""
    if "text_projection" in state_dict:
        rows, embed_dim = shape(state_dict, "text_projection", dims=2)
        if rows != width:
            raise shape_mismatch(
                "text_projection", (rows, embed_dim), (width, embed_dim), f"its rows must equal the text width {width}"
            )
        return "matrix", embed_dim, "text_projection"
    if "text_projection.weight" in state_dict:
        embed_dim, cols = shape(state_dict, "text_projection.weight", dims=2)
        if cols != width:
            raise shape_mismatch("text_projection.weight", (embed_dim, cols), (embed_dim, width),
                                 f"its columns must equal the text width {width}")
        expect(state_dict, "text_projection.bias", (embed_dim,), "a linear text projection has a bias")
        return "linear", embed_dim, "text_projection.weight"
    return "none", width, "no text_projection: the text features are the tower's width"


def text_tower(state_dict: Mapping[str, torch.Tensor]) -> Reading:
    """Read the text tower and joint embedding (sizes, variants and conventions) into a new ``Reading``.

    Raises ``StateDictError`` naming the key when shapes disagree (for instance
    ``text_projection`` rows that are not the text width).
    """
    reading = Reading()
    vocab_size, width = shape(state_dict, "token_embedding.weight", dims=2)
    context_length, pos_width = shape(state_dict, "positional_embedding", dims=2)
    if pos_width != width:
        raise shape_mismatch(
            "positional_embedding", (context_length, pos_width), (context_length, width),
            f"token_embedding.weight {(vocab_size, width)} says the text width is {width}",
        )
    expect(state_dict, "ln_final.weight", (width,), f"the text width is {width}")
    proj, embed_dim, proj_key = _text_projection(state_dict, width)
    reading.shape("embed_dim", embed_dim, proj_key)
    reading.shape("text_proj", proj, proj_key)
    reading.shape("context_length", context_length, "positional_embedding")
    reading.shape("vocab_size", vocab_size, "token_embedding.weight")
    reading.shape("text_width", width, "token_embedding.weight")
    transformer(reading, state_dict, "transformer.resblocks.", "text", width)
    reading.convention("text_heads", default_heads(width), f"64-wide heads ({OPENAI} and open_clip's)")
    for name in ("logit_scale", "logit_bias"):
        if name in state_dict and math.prod(shape(state_dict, name)) != 1:
            raise shape_mismatch(name, shape(state_dict, name), (), "it is one number")
    shape(state_dict, "logit_scale")
    reading.shape("logit_bias", "logit_bias" in state_dict, "logit_bias")
    read_conventions(reading)
    return reading
