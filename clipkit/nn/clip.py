"""The CLIP dual encoder: any image tower plus the causal text transformer, in OpenAI's layout."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clipkit.errors import ConfigurationError
from clipkit.nn.layers import Embedding, LayerNorm, Transformer

__all__ = ["CLIP", "DropsArchiveMetadata", "TEXT_POOLS", "TextFacts", "TEXT_PROJECTIONS", "drop_metadata", "encode_tokens"]

#: how a text is read off the tower's tokens: at the highest id (OpenAI's end-of-text), the last
#: position, the first ``eos_id``, or the first position
TEXT_POOLS: tuple[str, ...] = ("argmax", "last", "eos", "first")
#: ``text_projection`` as a ``[width, embed_dim]`` matrix, an ``nn.Linear`` with bias, or none at all
TEXT_PROJECTIONS: tuple[str, ...] = ("matrix", "linear", "none")

# This model's scalar attributes, which some checkpoints (the official TorchScript archives) also store
# as entries beside the weights. They restate what the tensor shapes already say, so loading drops them.
_SCALAR_ATTRIBUTE_KEYS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")


class DropsArchiveMetadata(nn.Module):
    """A module whose ``load_state_dict`` first applies ``drop_metadata`` to its own entries (CLIP and its towers)."""

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        drop_metadata(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class TextFacts:
    """``context_length`` and ``vocab_size``, read off the text embeddings of CLIP or its text tower."""

    positional_embedding: torch.Tensor
    token_embedding: nn.Embedding

    @property
    def context_length(self) -> int:
        """The number of text tokens the model takes (the positional embedding's rows)."""
        return self.positional_embedding.shape[0]

    @property
    def vocab_size(self) -> int:
        """The number of token ids the text embedding knows."""
        return self.token_embedding.num_embeddings


class CLIP(DropsArchiveMetadata, TextFacts):
    """Contrastive image-text model: ``encode_image``, ``encode_text`` and ``forward`` as in openai/CLIP.

    ``visual`` is the image tower: a module mapping ``[batch, 3, R, R]`` images
    to ``[batch, embed_dim]`` features, with ``input_resolution`` (R) and a
    ``dtype`` property (the dtype images are cast to). The text tower is built
    here from ``context_length``, ``vocab_size`` and the ``text_*`` sizes.
    ``state_dict()`` keys are exactly the official checkpoints' (``visual.*``,
    ``transformer.resblocks.N.*``, ``token_embedding.weight``,
    ``positional_embedding``, ``ln_final.*``, ``text_projection``,
    ``logit_scale``). Nothing outside the state dict is allocated at
    construction, so the model can be built under ``torch.device("meta")`` and
    filled with ``load_state_dict(sd, strict=True, assign=True)``.

    open_clip's text-tower variants: ``causal=False`` (bidirectional
    attention), ``text_pool`` (one of ``TEXT_POOLS``; ``"eos"`` reads at the
    first ``eos_id``), ``text_proj`` (one of ``TEXT_PROJECTIONS``; with
    ``"linear"`` the keys are ``text_projection.weight``/``.bias``),
    ``logit_bias`` (a learned ``logit_bias`` added to the logits), and
    ``text_block`` keywords for every text block (``mlp_width``,
    ``layer_scale``, ``norm_eps`` (also ``ln_final``'s), ``gelu_approximate``).
    """

    #: kept float32 by ``clipkit.nn.cast_model`` (the reference never halves them)
    fp32_parameters: tuple[str, ...] = ("logit_scale", "logit_bias", "positional_embedding")

    def __init__(
        self,
        visual: nn.Module,
        *,
        embed_dim: int,
        context_length: int,
        vocab_size: int,
        text_width: int,
        text_layers: int,
        text_heads: int,
        quick_gelu: bool = True,
        causal: bool = True,
        text_pool: str = "argmax",
        eos_id: int | None = None,
        text_proj: str = "matrix",
        logit_bias: bool = False,
        **text_block: Any,
    ) -> None:
        super().__init__()
        if text_pool not in TEXT_POOLS or text_proj not in TEXT_PROJECTIONS:
            raise ConfigurationError(
                f"text_pool must be one of {TEXT_POOLS} and text_proj one of {TEXT_PROJECTIONS}, "
                f"got {text_pool!r} and {text_proj!r}"
            )
        if text_pool == "eos" and eos_id is None:
            raise ConfigurationError("text_pool='eos' needs the end-of-text token id (eos_id)")
        self.embed_dim = embed_dim
        self.text_pool = text_pool
        self.eos_id = eos_id
        self.visual = visual
        self.transformer = Transformer(
            text_width, text_layers, text_heads, quick_gelu=quick_gelu, causal=causal, **text_block
        )
        self.token_embedding = Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, text_width))
        self.ln_final = LayerNorm(text_width, eps=text_block.get("norm_eps", 1e-5))
        self.text_projection: nn.Module | nn.Parameter | None = None
        if text_proj == "matrix":
            self.text_projection = nn.Parameter(torch.empty(text_width, embed_dim))
            nn.init.normal_(self.text_projection, std=text_width**-0.5)
        elif text_proj == "linear":
            self.text_projection = nn.Linear(text_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.logit_bias = nn.Parameter(torch.zeros(())) if logit_bias else None
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.constant_(self.logit_scale, 2.659260036932778)  # log(1 / 0.07)

    # -- facts read off the weights ---------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the image tower's weight dtype (float16 after ``cast_model(model, torch.float16)``)."""
        visual_dtype = getattr(self.visual, "dtype", None)
        return visual_dtype if isinstance(visual_dtype, torch.dtype) else self.transformer.resblocks[0].mlp.c_fc.weight.dtype

    # -- encoders ------------------------------------------------------------------------

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Embed a batch of preprocessed images ``[batch, 3, R, R]`` into ``[batch, embed_dim]`` (not normalised)."""
        return self.visual(image.to(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Embed a batch of token ids ``[batch, tokens]`` into ``[batch, embed_dim]`` (not normalised).

        Each sequence is read at its end-of-text token, the highest id in the
        row (``text.argmax(dim=-1)``), as the reference does, unless the model
        was built with another ``text_pool``. ``tokens`` may be shorter than
        ``context_length`` but not longer.
        """
        return encode_tokens(self, text, self.dtype)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits_per_image, logits_per_text)``: scaled cosine similarities, ``[images, texts]`` and its transpose."""
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logit_scale = self.logit_scale.exp()
        logits_per_image = logit_scale * image_features @ text_features.t()
        if self.logit_bias is not None:
            logits_per_image = logits_per_image + self.logit_bias
        return logits_per_image, logits_per_image.t()


def drop_metadata(state_dict: dict[str, Any], prefix: str) -> None:
    """Drop the archives' metadata entries (they restate the shapes); a one-element ``logit_scale``/``logit_bias`` becomes 0-dim."""
    for key in _SCALAR_ATTRIBUTE_KEYS:
        state_dict.pop(prefix + key, None)
    for name in ("logit_scale", "logit_bias"):
        scalar = state_dict.get(prefix + name)
        if isinstance(scalar, torch.Tensor) and scalar.shape == (1,):
            state_dict[prefix + name] = scalar.reshape(())


def encode_tokens(text_tower: nn.Module, text: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The text tower's forward pass in ``dtype`` on a module holding CLIP's text attributes.

    ``text_tower`` has ``token_embedding``, ``positional_embedding``,
    ``transformer``, ``ln_final`` and ``text_projection`` (a ``CLIP``, or the
    text tower alone); each row is read where its ``text_pool`` says (default:
    at its highest token id), then projected as ``text_projection`` is: a
    matrix, an ``nn.Linear`` or ``None`` (no projection).
    """
    tokens = text.shape[-1]
    context_length = text_tower.positional_embedding.shape[0]
    if tokens > context_length:
        raise ConfigurationError(
            f"text has {tokens} tokens but this model's context length is {context_length}; "
            f"tokenize with context_length={context_length}"
        )
    read_at = pool_index(text, getattr(text_tower, "text_pool", "argmax"), getattr(text_tower, "eos_id", None))
    tokens = _tokens_read(text_tower, read_at, tokens)
    x = text_tower.token_embedding(text[:, :tokens]).to(dtype)
    x = x + text_tower.positional_embedding[:tokens].to(dtype)
    x = text_tower.transformer(x)
    x = text_tower.ln_final(x).to(dtype)
    x = x[torch.arange(x.shape[0], device=x.device), read_at]
    projection = text_tower.text_projection
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x if projection is None else x @ projection.to(dtype)


def pool_index(text: torch.Tensor, text_pool: str, eos_id: int | None) -> torch.Tensor:
    """The position each row of ``text`` is read at, by ``text_pool`` (one of ``TEXT_POOLS``)."""
    if text_pool == "argmax":
        return text.argmax(dim=-1)
    if text_pool == "eos":
        return (text == eos_id).int().argmax(dim=-1)
    position = 0 if text_pool == "first" else text.shape[-1] - 1
    return torch.full(text.shape[:1], position, dtype=torch.long, device=text.device)


def _tokens_read(text_tower: nn.Module, read_at: torch.Tensor, tokens: int) -> int:
    """How many leading tokens the features read at ``read_at`` depend on: up to the last one read, if causal.

    In a causal transformer a token sees only itself and the tokens before it,
    so the padding after the batch's last end-of-text token changes nothing
    that is read, and is not computed (prompts are usually a fraction of the
    77-token context). The numbers are the same. While tracing or compiling
    the full length is kept: the cut depends on the tokens' values.
    """
    causal = getattr(getattr(text_tower, "transformer", None), "causal", False)
    if not causal or read_at.numel() == 0 or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return tokens
    return int(read_at.max()) + 1
