"""``clipkit.shapes``: the public shape checks every detector uses, on real (meta-device) state dicts."""

from __future__ import annotations

import pytest
import torch

from clipkit import shapes
from clipkit.errors import StateDictError

ADVICE = "Save it again from the plugin's own model."


def meta(**sizes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {key.replace("__", "."): torch.empty(size, device="meta") for key, size in sizes.items()}


def test_shape_names_a_missing_key_and_ends_with_the_callers_advice() -> None:
    with pytest.raises(StateDictError, match=r"no 'visual\.proj'\. Save it again") as info:
        shapes.shape({}, "visual.proj", advice=ADVICE)
    assert info.value.missing == ("visual.proj",)


def test_shape_checks_the_number_of_dimensions() -> None:
    state_dict = meta(visual__proj=(8, 4))
    assert shapes.shape(state_dict, "visual.proj", dims=2) == (8, 4)
    with pytest.raises(StateDictError, match="should have 3 dimensions") as info:
        shapes.shape(state_dict, "visual.proj", dims=3)
    assert info.value.mismatched == (("visual.proj", (-1, -1, -1), (8, 4)),)


def test_expect_says_why_the_shape_was_expected() -> None:
    state_dict = meta(ln__weight=(6,))
    shapes.expect(state_dict, "ln.weight", (6,), "the width is 6")
    with pytest.raises(StateDictError, match=r"ln\.weight has shape \(6,\), expected \(8,\): the width is 8\. Save"):
        shapes.expect(state_dict, "ln.weight", (8,), "the width is 8", advice=ADVICE)


def test_block_count_counts_numbered_blocks_and_refuses_a_gap() -> None:
    blocks = {f"blocks.{i}.w": torch.empty(1, device="meta") for i in (0, 1, 2)}
    assert shapes.block_count(blocks, "blocks.") == 3
    assert shapes.block_count(blocks, "other.") == 0
    del blocks["blocks.1.w"]
    with pytest.raises(StateDictError, match=r"blocks\.1 missing") as info:
        shapes.block_count(blocks, "blocks.")
    assert info.value.missing == ("blocks.1",)


def test_square_side_reads_a_grid_plus_class_token() -> None:
    assert shapes.square_side(meta(pos=(50, 16)), "pos", 16, "patches") == 7
    with pytest.raises(StateDictError, match="square number of patches"):
        shapes.square_side(meta(pos=(51, 16)), "pos", 16, "patches")
    with pytest.raises(StateDictError, match="its width should be 32"):
        shapes.square_side(meta(pos=(50, 16)), "pos", 32, "patches")


def test_has_keys_is_a_signature_test() -> None:
    state_dict = meta(a=(1,), b=(1,))
    assert shapes.has_keys(state_dict, ("a", "b"))
    assert not shapes.has_keys(state_dict, ("a", "c"))
