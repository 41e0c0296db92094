"""The default tokenizer for any spec: OpenAI's byte-level BPE (``clipkit.tokenize``), at the spec's context length."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipkit.errors import ConfigurationError
from clipkit.hookspecs import hookimpl
from clipkit.spec import ArchSpec
from clipkit.tokenizer import tokenize

OPENAI_VOCAB_SIZE = 49408
OPENAI_CONTEXT_LENGTH = 77


class OpenAITokenizer:
    """``tokenizer(texts, context_length=None) -> LongTensor``: ``clipkit.tokenize`` bound to a model's context length.

    Rows are ``<start> ids... <end>`` zero-padded; a text longer than the
    context keeps its first tokens and ends with the end token (``truncate=True``
    of the reference ``clip.tokenize``).
    """

    vocab_size = OPENAI_VOCAB_SIZE

    def __init__(self, context_length: int = OPENAI_CONTEXT_LENGTH) -> None:
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenize ``texts`` into ``[len(texts), context_length or self.context_length]`` int64 ids."""
        return tokenize(texts, context_length=context_length or self.context_length, truncate=True)

    def __repr__(self) -> str:
        return f"OpenAITokenizer(context_length={self.context_length})"


@hookimpl(trylast=True)
def make_tokenizer(spec: ArchSpec) -> OpenAITokenizer:
    """Serve every spec no other plugin gave a tokenizer for, if its vocabulary is OpenAI's 49408 tokens.

    A spec with another ``vocab_size`` was trained with another tokenizer:
    ``ConfigurationError`` rather than ids the model never saw.
    """
    vocab_size = getattr(spec, "vocab_size", OPENAI_VOCAB_SIZE)
    if vocab_size != OPENAI_VOCAB_SIZE:
        raise ConfigurationError(
            f"no plugin gives a tokenizer for family {spec.family!r} ({type(spec).__name__}), and its vocabulary "
            f"has {vocab_size} tokens, not the {OPENAI_VOCAB_SIZE} of OpenAI's BPE tokenizer (clipkit.tokenize); "
            "install the plugin that provides this family's tokenizer, or tokenize with the one it was trained with"
        )
    return OpenAITokenizer(getattr(spec, "context_length", OPENAI_CONTEXT_LENGTH))
