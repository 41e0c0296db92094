"""Model inputs for tests: random image batches and token batches shaped like ``clipkit.tokenize`` output."""

from __future__ import annotations

import torch

__all__ = ["sample_images", "sample_tokens"]


def sample_images(resolution: int, batch: int = 2, *, seed: int = 0) -> torch.Tensor:
    """A ``[batch, 3, resolution, resolution]`` float32 batch of normalised-looking random images."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 3, resolution, resolution), generator=gen)


def sample_tokens(context_length: int, vocab_size: int, batch: int = 3, *, seed: int = 0) -> torch.Tensor:
    """A ``[batch, context_length]`` int64 batch shaped like ``clipkit.tokenize`` output for a vocabulary of ``vocab_size``.

    Each row is start-of-text (``vocab_size - 2``), ordinary ids, end-of-text
    (``vocab_size - 1``, the row's highest id) at a different position per row,
    then zero padding.
    """
    if vocab_size < 3 or context_length < 2:
        raise ValueError(f"sample tokens need vocab_size >= 3 and context_length >= 2, got {vocab_size}, {context_length}")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros((batch, context_length), dtype=torch.long)
    for row in range(batch):
        end = 1 + (row * 5) % (context_length - 1)
        tokens[row, 0] = vocab_size - 2
        if end > 1:
            tokens[row, 1:end] = torch.randint(1, vocab_size - 2, (end - 1,), generator=gen)
        tokens[row, end] = vocab_size - 1
    return tokens
