"""Reading a state dict's shapes: the checks every ``detect_architecture`` needs, public for plugin authors.

Only key names and ``.shape`` are read, so state dicts on the meta device or
memory-mapped from disk cost nothing to inspect. Every check that fails raises
``clipkit.errors.StateDictError`` naming the key, the shape found and the shape
expected, followed by ``advice``: what the user should do. The default advice
fits OpenAI-layout checkpoints; a plugin for another layout passes its own
(``advice="... save it again with save_pretrained."``).

    from clipkit import shapes

    width = shapes.shape(state_dict, "visual.class_embedding", dims=1)[0]
    shapes.expect(state_dict, "visual.proj", (width, 512), "it maps the vision width to the joint embedding")
    layers = shapes.block_count(state_dict, "visual.transformer.resblocks.")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from clipkit.errors import StateDictError

__all__ = [
    "OPENAI_LAYOUT_ADVICE",
    "block_count",
    "default_heads",
    "expect",
    "has_keys",
    "shape",
    "shape_mismatch",
    "square_side",
]

#: The advice every check appends by default: what to do about an OpenAI-layout checkpoint that does not add up.
OPENAI_LAYOUT_ADVICE = (
    "The checkpoint is damaged or not an OpenAI-layout CLIP; re-download it or convert it to that layout."
)


def has_keys(state_dict: Mapping[str, torch.Tensor], keys: Sequence[str]) -> bool:
    """True if every key in ``keys`` is in ``state_dict`` (a plugin's signature test before it claims a checkpoint)."""
    return all(key in state_dict for key in keys)


def shape(
    state_dict: Mapping[str, torch.Tensor], key: str, *, dims: int | None = None, advice: str = OPENAI_LAYOUT_ADVICE
) -> tuple[int, ...]:
    """The shape of ``state_dict[key]`` as a tuple of ints, with ``dims`` dimensions if given.

    A missing key, or a tensor with another number of dimensions than
    ``dims``, raises ``StateDictError`` naming the key and ending in ``advice``.
    """
    try:
        value = state_dict[key]
    except KeyError:
        raise StateDictError(f"the state dict has no {key!r}. {advice}", missing=[key]) from None
    found = tuple(value.shape)
    if dims is not None and len(found) != dims:
        raise StateDictError(
            f"{key} has shape {found} but should have {dims} dimensions. {advice}",
            mismatched=[(key, (-1,) * dims, found)],
        )
    return found


def shape_mismatch(
    key: str, found: tuple[int, ...], expected: tuple[int, ...], why: str, *, advice: str = OPENAI_LAYOUT_ADVICE
) -> StateDictError:
    """The ``StateDictError`` for one key whose shape is not what the rest of the state dict implies (``why`` says what).

    Returned, not raised, so the caller writes ``raise shapes.shape_mismatch(...)``
    where its own test fails.
    """
    return StateDictError(
        f"{key} has shape {found}, expected {expected}: {why}. {advice}",
        mismatched=[(key, expected, found)],
    )


def expect(
    state_dict: Mapping[str, torch.Tensor],
    key: str,
    expected: tuple[int, ...],
    why: str,
    *,
    advice: str = OPENAI_LAYOUT_ADVICE,
) -> None:
    """Check that ``state_dict[key]`` exists and has shape ``expected``, else raise ``StateDictError`` saying ``why``.

    ``why`` is the reason that shape is expected, for instance ``"the vision
    width is 768"``: the message reads "<key> has shape (...), expected (...):
    <why>. <advice>".
    """
    found = shape(state_dict, key, advice=advice)
    if found != expected:
        raise shape_mismatch(key, found, expected, why, advice=advice)


def block_count(state_dict: Mapping[str, torch.Tensor], prefix: str, *, advice: str = OPENAI_LAYOUT_ADVICE) -> int:
    """How many numbered blocks ``{prefix}N.*`` there are (0 if none); they must be numbered 0..n-1 with no gap.

    ``prefix`` ends with the dot before the number, e.g.
    ``"visual.transformer.resblocks."``. A gap in the numbering raises
    ``StateDictError`` naming the missing blocks.
    """
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
            f"missing. {advice}",
            missing=[f"{prefix}{i}" for i in missing],
        )
    return len(indices)


def square_side(
    state_dict: Mapping[str, torch.Tensor], key: str, width: int, what: str, *, advice: str = OPENAI_LAYOUT_ADVICE
) -> int:
    """For a ``[side**2 + 1, width]`` positional embedding (a square grid plus one class token), return ``side``.

    ``what`` names the grid's cells in the message (``"patches"``,
    ``"feature-map positions"``). Any other shape raises ``StateDictError``.
    """
    found = shape(state_dict, key, dims=2, advice=advice)
    side = math.isqrt(max(found[0] - 1, 0))
    if found[0] < 2 or side * side + 1 != found[0]:
        raise StateDictError(
            f"{key} has shape {found}: its {found[0]} rows should be a square number of {what} plus one "
            f"class/mean token (e.g. 50 = 7*7 + 1). {advice}",
            mismatched=[(key, (side * side + 1, width), found)],
        )
    if found[1] != width:
        raise shape_mismatch(key, found, (found[0], width), f"its width should be {width}", advice=advice)
    return side


def default_heads(width: int) -> int:
    """OpenAI's head count for ``width``: ``width // 64`` (64-wide heads), at least one, and a divisor of ``width``.

    The shapes do not show the head count; the official models all use 64-wide
    heads. For a width that ``width // 64`` does not divide, the largest divisor
    below it is used (heads at least 64 wide). A plugin using this default
    should let a config or the caller's keyword override it.
    """
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads
