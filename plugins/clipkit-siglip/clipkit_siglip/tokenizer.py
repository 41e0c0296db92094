"""SigLIP's SentencePiece tokenizer: the same ids as transformers' ``SiglipTokenizer``, without transformers.

Read from a checkpoint directory: ``spiece.model`` (the SentencePiece model)
and, when present, ``tokenizer_config.json`` / ``special_tokens_map.json`` for
the special tokens, lower-casing and ``legacy``. Each text is split on the
special tokens (whitespace next to them stripped), every other piece is
canonicalised (lower-cased, ASCII punctuation removed, whitespace collapsed)
and encoded; the row ends with ``</s>`` and is padded with the pad token
(``</s>`` too in SigLIP's files) to the full context, truncated to leave room
for the end token: ``padding="max_length", truncation=True`` in transformers'
terms, how SigLIP was trained and how its text tower (which reads the last
position) expects its input.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from clipkit.errors import CheckpointError, ConfigurationError
from clipkit_siglip.files import read_json

__all__ = ["SPIECE", "SiglipTokenizer", "read_tokenizer_config"]

SPIECE = "spiece.model"
_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, Mapping) else value


def read_tokenizer_config(directory: Path) -> dict[str, Any]:
    """``tokenizer_config.json`` with ``special_tokens_map.json`` under it, special tokens as plain strings.

    A value of the wrong type (a token that is not text, ``added_tokens_decoder``
    that is not an object of tokens) raises ``CheckpointError`` naming it.
    """
    config = {**(read_json(directory / "special_tokens_map.json") or {}),
              **(read_json(directory / "tokenizer_config.json") or {})}
    for name in ("eos_token", "pad_token", "unk_token"):
        if name in config:
            config[name] = _token_text(config[name])
            _check_text(directory, name, config[name])
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, Mapping):
        raise CheckpointError(f"{directory}: added_tokens_decoder is {decoder!r}, not an object of tokens")
    for key, entry in decoder.items():
        _check_text(directory, f"added_tokens_decoder.{key}.content", _token_text(entry))
        if not key.isdigit():
            raise CheckpointError(f"{directory}: added_tokens_decoder has the id {key!r}, not a number")
    for name in ("additional_special_tokens", "extra_special_tokens"):
        tokens = config.get(name) or []
        if not isinstance(tokens, list):
            raise CheckpointError(f"{directory}: {name} is {tokens!r}, not a list of tokens")
        for token in tokens:
            _check_text(directory, name, _token_text(token))
    return config


def _check_text(directory: Path, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"{directory}: tokenizer setting {name} is {value!r}, not a token's text")


def _load_sentencepiece(path: Path, legacy: bool) -> Any:
    try:
        import sentencepiece as spm
    except ImportError as exc:  # pragma: no cover - a dependency of clipkit-siglip
        raise ConfigurationError("SigLIP's tokenizer needs sentencepiece: pip install sentencepiece") from exc
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a SentencePiece model ({exc})") from exc
    if not legacy:  # transformers' legacy=False: the model's dummy prefix switched off
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
        if proto.normalizer_spec.add_dummy_prefix:
            proto.normalizer_spec.add_dummy_prefix = False
            processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


class SiglipTokenizer:
    """``tokenizer(texts, context_length=None) -> LongTensor``: SigLIP's ids, padded to the context with the pad id."""

    def __init__(self, directory: str | Path, *, context_length: int, vocab_size: int) -> None:
        directory = Path(directory)
        config = read_tokenizer_config(directory)
        self.path = directory / SPIECE
        if not self.path.is_file():
            raise ConfigurationError(f"SigLIP's tokenizer needs {self.path}, which does not exist")
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.lowercase = bool(config.get("do_lower_case", True))
        self.sp = _load_sentencepiece(self.path, legacy=bool(config.get("legacy", True)))
        self.unk = config.get("unk_token", "<unk>")
        self.eos_id = self._special_id(config.get("eos_token", "</s>"), config)
        self.pad_id = self._special_id(config.get("pad_token", "</s>"), config)
        extras = [*(config.get("additional_special_tokens") or ()), *(config.get("extra_special_tokens") or ())]
        #: the special tokens (a leading "▁" before one is dropped, as transformers does)
        self.special_names = {config.get("eos_token", "</s>"), self.unk, config.get("pad_token", "</s>"),
                              *map(_token_text, extras)}
        # every token a text is split on (special and added ones), with its id and whether whitespace on its
        # left/right is stripped
        self.specials: dict[str, tuple[int, bool, bool]] = {
            token: (self._special_id(token, config), *self._strips(token, config))
            for token in [*self.special_names, *map(_token_text, (config.get("added_tokens_decoder") or {}).values())]
        }
        pattern = "|".join(re.escape(t) for t in sorted(self.specials, key=len, reverse=True))
        self._split = re.compile(f"({pattern})")
        self._unk_length = len(self.sp.encode(self.unk, out_type=str))
        largest = max(self.sp.get_piece_size() - 1, *(ids[0] for ids in self.specials.values()))
        if largest >= vocab_size:
            raise ConfigurationError(
                f"{directory}'s tokenizer has ids up to {largest} ({self.path.name}: {self.sp.get_piece_size()} "
                f"pieces), more than the model's {vocab_size}-token vocabulary: it is not this checkpoint's tokenizer"
            )

    def _special_id(self, token: str, config: Mapping[str, Any]) -> int:
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            if _token_text(entry) == token:
                return int(key)
        piece = self.sp.piece_to_id(token)
        if self.sp.id_to_piece(piece) != token:
            raise ConfigurationError(f"the special token {token!r} of {self.path.parent} is not in {self.path.name}")
        return piece

    @staticmethod
    def _strips(token: str, config: Mapping[str, Any]) -> tuple[bool, bool]:
        for entry in (config.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, Mapping) and entry.get("content") == token:
                return bool(entry.get("lstrip", False)), bool(entry.get("rstrip", False))
        return True, True  # SiglipTokenizer's own special tokens strip both sides

    def _canonical(self, text: str) -> str:
        if self.lowercase:
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()

    def _pieces(self, text: str) -> list[str]:
        pieces = self.sp.encode(self.unk + self._canonical(text), out_type=str)
        return pieces[self._unk_length:] if len(pieces) >= self._unk_length else pieces

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` without the end token, padding or truncation."""
        chunks = self._split.split(_UNDERLINE + text.replace(_UNDERLINE, " "))
        for i, chunk in enumerate(chunks):
            if chunk in self.specials:
                _, lstrip, rstrip = self.specials[chunk]
                if rstrip and i + 1 < len(chunks) and chunks[i + 1]:
                    chunks[i + 1] = chunks[i + 1].lstrip()
                if lstrip and i > 0 and chunks[i - 1]:
                    chunks[i - 1] = chunks[i - 1].rstrip()
        pieces: list[str] = []
        for chunk in chunks:
            if chunk in self.specials:
                pieces.append(chunk)
            elif chunk:
                pieces.extend(self._pieces(chunk))
        if len(pieces) > 1 and pieces[0] == _UNDERLINE and pieces[1] in self.special_names:
            pieces = pieces[1:]
        return [self.specials[p][0] if p in self.specials else self.sp.piece_to_id(p) for p in pieces]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenize ``texts`` into ``[len(texts), context_length or self.context_length]`` int64 ids."""
        if isinstance(texts, str):
            texts = [texts]
        width = context_length or self.context_length
        if width < 1:
            raise ConfigurationError(f"context_length must be positive, got {width}")
        rows = torch.full((len(texts), width), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)[: width - 1]
            if not ids or ids[-1] != self.eos_id:
                ids.append(self.eos_id)
            rows[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return rows

    def __repr__(self) -> str:
        return f"SiglipTokenizer({str(self.path.parent)!r}, context_length={self.context_length})"
