"""clipkit.tokenize gives the reference token ids, including on messy real-world text."""

from __future__ import annotations

import oracles
import pytest
import torch

import clipkit
from clipkit.errors import ConfigurationError
from clipkit.tokenizer import get_tokenizer

TEXTS = [
    "a photo of a cat",
    "A PHOTO OF A DOG.",
    "an astronaut riding a horse on the moon, 4k, trending on artstation",
    "Crème brûlée &amp; café au lait — naïve façade",
    "it's the dog's bone, isn't it? they'll've said so",
    "  lots\tof   whitespace\n\nand newlines  ",
    "数字 123 4567 and 日本語のテキスト 🐈‍⬛🚀",
    "mis-spelled woooords, CamelCaseWords and snake_case_words!!!",
    "",
    "<|startoftext|> literal special tokens <|endoftext|>",
]


def test_matches_openai_tokenize():
    expected = oracles.openai_clip().tokenize(TEXTS)
    assert torch.equal(clipkit.tokenize(TEXTS), expected.long())


def test_matches_open_clip_tokenize():
    # open_clip spells literal "<|startoftext|>" out as text; OpenAI (and clipkit) read it as the special token
    plain = [t for t in TEXTS if "<|" not in t]
    assert torch.equal(clipkit.tokenize(plain), oracles.open_clip().tokenize(plain))


def test_single_string_and_custom_context_length():
    tokens = clipkit.tokenize("a diagram", context_length=16)
    assert tokens.shape == (1, 16) and tokens.dtype == torch.long
    tokenizer = get_tokenizer()
    assert tokens[0, 0] == tokenizer.sot_token
    assert tokens[0].argmax() == int((tokens[0] != 0).sum()) - 1  # end token is the highest id, last non-pad


def test_too_long_raises_unless_truncated():
    long_text = "word " * 100
    with pytest.raises(ConfigurationError, match="truncate=True"):
        clipkit.tokenize(long_text)
    with pytest.raises(RuntimeError):  # what code written against the reference catches
        clipkit.tokenize(long_text)
    tokens = clipkit.tokenize(long_text, truncate=True)
    expected = oracles.openai_clip().tokenize(long_text, truncate=True)
    assert torch.equal(tokens, expected.long())
    assert tokens[0, -1] == get_tokenizer().eot_token


def test_decode_round_trips_words():
    tokenizer = get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("a photo of a cat")).strip() == "a photo of a cat"
