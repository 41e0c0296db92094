"""CLIP's byte-level BPE tokenizer and ``tokenize``, matching the reference token ids.

The vocabulary file (``bpe_simple_vocab_16e6.txt.gz``) is OpenAI's, shipped with
the package. Text is cleaned (ftfy, HTML unescape, whitespace collapse),
lower-cased, split with CLIP's regular expression, mapped byte-to-unicode and
merged by rank.
"""

from __future__ import annotations

import functools
import gzip
import html
from importlib import resources
from typing import Any, Sequence

import torch

from clipkit.errors import ContextLengthError

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
_MERGE_COUNT = 49152 - 256 - 2


@functools.lru_cache(maxsize=1)
def _split_pattern() -> Any:
    """CLIP's word-splitting expression (``regex``, imported here: ``import clipkit`` need not pay for it)."""
    import regex

    return regex.compile(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        regex.IGNORECASE,
    )


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable unicode characters (no whitespace/control)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clean(text: str) -> str:
    import ftfy  # imported on first use, like ``regex``: ~0.1 s that loading a model does not need

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split())


class Tokenizer:
    """CLIP's tokenizer: ``encode(text) -> ids`` and ``decode(ids) -> text``, with a per-word merge cache."""

    def __init__(self, vocab_path: str | None = None) -> None:
        if vocab_path is None:
            data = resources.files("clipkit").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
        else:
            with open(vocab_path, "rb") as fh:
                data = fh.read()
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _MERGE_COUNT + 1]
        merges = [tuple(line.split()) for line in lines]
        symbols = list(_byte_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: token for token, i in self.encoder.items()}
        self.ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = _byte_to_unicode()
        self.byte_decoder = {u: b for b, u in self.byte_encoder.items()}
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}
        self.sot_token = self.encoder[SOT]
        self.eot_token = self.encoder[EOT]

    def _bpe(self, word: str) -> list[str]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (cleaned and lower-cased), without start/end tokens."""
        ids: list[int] = []
        for piece in _split_pattern().findall(_clean(text).lower()):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text for ``ids`` (word boundaries become spaces; start/end tokens are kept as text)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """The shared tokenizer with the bundled vocabulary (built once per process)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """Tokenize ``texts`` into a ``[len(texts), context_length]`` int64 tensor, as the reference ``clip.tokenize``.

    Each row is ``<start> ids... <end>`` zero-padded. A text longer than the
    context raises ``ContextLengthError`` (a ``ValueError`` and a
    ``RuntimeError``) unless ``truncate=True``, which keeps
    the first tokens and ends the row with the end token.
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = get_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.sot_token, *tokenizer.encode(text), tokenizer.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise ContextLengthError(
                    f"text {row} is {len(ids)} tokens long, more than the context length {context_length}: "
                    "shorten it or pass truncate=True"
                )
            ids = ids[:context_length]
            ids[-1] = tokenizer.eot_token
        result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result
