"""Shared by the ResNet and ViT plugins: reading the text tower off an OpenAI-layout state dict.

Only key names and ``.shape`` are used, so state dicts on the meta device or
memory-mapped from disk cost nothing to inspect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from clipkit.builtin.specs import CLIPSpec
from clipkit.errors import StateDictError
from clipkit.nn import CLIP

#: Keys every OpenAI-layout CLIP has in its text tower; part of both plugins' signatures.
TEXT_SIGNATURE: tuple[str, ...] = ("token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight")

ADVICE = "The checkpoint is damaged or not an OpenAI-layout CLIP; re-download it or convert it to that layout."


def has_keys(state_dict: Mapping[str, torch.Tensor], keys: Sequence[str]) -> bool:
    """True if every key in ``keys`` is in ``state_dict``."""
    return all(key in state_dict for key in keys)


def shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """The shape of ``state_dict[key]`` as a tuple; a missing key is a ``StateDictError``."""
    try:
        value = state_dict[key]
    except KeyError:
        raise StateDictError(f"the state dict has no {key!r}. {ADVICE}", missing=[key]) from None
    return tuple(value.shape)


def mismatch(key: str, found: tuple[int, ...], expected: tuple[int, ...], why: str) -> StateDictError:
    """A ``StateDictError`` for one key whose shape is not what the rest of the state dict implies."""
    return StateDictError(
        f"{key} has shape {found}, expected {expected}: {why}. {ADVICE}",
        mismatched=[(key, expected, found)],
    )


def expect(state_dict: Mapping[str, torch.Tensor], key: str, expected: tuple[int, ...], why: str) -> None:
    """Raise ``StateDictError`` unless ``state_dict[key]`` exists and has shape ``expected``."""
    found = shape(state_dict, key)
    if found != expected:
        raise mismatch(key, found, expected, why)


def ndim(state_dict: Mapping[str, torch.Tensor], key: str, dims: int) -> tuple[int, ...]:
    """The shape of ``state_dict[key]``, which must have ``dims`` dimensions."""
    found = shape(state_dict, key)
    if len(found) != dims:
        raise StateDictError(
            f"{key} has shape {found} but should have {dims} dimensions. {ADVICE}",
            mismatched=[(key, (-1,) * dims, found)],
        )
    return found


def block_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Count the numbered blocks ``{prefix}N.*``; they must be numbered 0..n-1 with no gap (n may be 0)."""
    depth = prefix.count(".")
    indices = set()
    for key in state_dict:
        if key.startswith(prefix):
            part = key.split(".")[depth]
            if part.isdigit():
                indices.add(int(part))
    if indices and indices != set(range(max(indices) + 1)):
        missing = sorted(set(range(max(indices) + 1)) - indices)
        raise StateDictError(
            f"blocks {prefix}N are not numbered 0..{max(indices)}: {', '.join(f'{prefix}{i}' for i in missing)} "
            f"missing. {ADVICE}",
            missing=[f"{prefix}{i}" for i in missing],
        )
    return len(indices)


def square_side(state_dict: Mapping[str, torch.Tensor], key: str, width: int, what: str) -> int:
    """For a ``[side**2 + 1, width]`` positional embedding, return ``side``; anything else is a ``StateDictError``."""
    found = ndim(state_dict, key, 2)
    side = math.isqrt(max(found[0] - 1, 0))
    if found[0] < 2 or side * side + 1 != found[0]:
        raise StateDictError(
            f"{key} has shape {found}: its {found[0]} rows should be a square number of {what} plus one "
            f"class/mean token (e.g. 50 = 7*7 + 1). {ADVICE}",
            mismatched=[(key, (side * side + 1, width), found)],
        )
    if found[1] != width:
        raise mismatch(key, found, (found[0], width), f"its width should be {width}")
    return side


def default_heads(width: int) -> int:
    """OpenAI's head count for ``width``: ``width // 64`` (64-wide heads), at least one, and a divisor of ``width``.

    The shapes do not show the head count; the official models all use 64-wide
    heads. For a width that ``width // 64`` does not divide, the largest divisor
    below it is used (heads at least 64 wide).
    """
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads


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
    vocab_size, width = ndim(state_dict, "token_embedding.weight", 2)
    context_length, pos_width = ndim(state_dict, "positional_embedding", 2)
    if pos_width != width:
        raise mismatch(
            "positional_embedding", (context_length, pos_width), (context_length, width),
            f"token_embedding.weight {(vocab_size, width)} says the text width is {width}",
        )
    expect(state_dict, "ln_final.weight", (width,), f"the text width is {width}")
    rows, embed_dim = ndim(state_dict, "text_projection", 2)
    if rows != width:
        raise mismatch(
            "text_projection", (rows, embed_dim), (width, embed_dim),
            f"its rows must equal the text width {width} (token_embedding.weight is {(vocab_size, width)})",
        )
    layers = block_count(state_dict, "transformer.resblocks.")
    if layers == 0:
        raise StateDictError(f"the state dict has no transformer.resblocks.N text blocks. {ADVICE}",
                             missing=["transformer.resblocks.0.attn.in_proj_weight"])
    check_transformer(state_dict, "transformer.resblocks.", width, layers)
    scale = shape(state_dict, "logit_scale")
    if math.prod(scale) != 1:
        raise mismatch("logit_scale", scale, (), "it is one number")
    return dict(
        embed_dim=embed_dim,
        context_length=context_length,
        vocab_size=vocab_size,
        text_width=width,
        text_layers=layers,
        text_heads=default_heads(width),
    )


def build_clip(visual: torch.nn.Module, spec: CLIPSpec) -> CLIP:
    """The dual encoder around ``visual`` with the text tower and joint embedding ``spec`` describes."""
    return CLIP(
        visual,
        embed_dim=spec.embed_dim,
        context_length=spec.context_length,
        vocab_size=spec.vocab_size,
        text_width=spec.text_width,
        text_layers=spec.text_layers,
        text_heads=spec.text_heads,
        quick_gelu=spec.quick_gelu,
    )
