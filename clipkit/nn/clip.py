"""The CLIP dual encoder: any image tower plus the causal text transformer, in OpenAI's layout."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clipkit.errors import ConfigurationError
from clipkit.nn.layers import LayerNorm, Transformer

__all__ = ["CLIP", "drop_metadata", "encode_tokens"]

# This model's scalar attributes, which some checkpoints (the official TorchScript archives) also store
# as entries beside the weights. They restate what the tensor shapes already say, so loading drops them.
_SCALAR_ATTRIBUTE_KEYS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")


class CLIP(nn.Module):
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
    """

    #: kept float32 by ``clipkit.nn.cast_model`` (the reference never halves it)
    fp32_parameters: tuple[str, ...] = ("logit_scale",)

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
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.visual = visual
        self.transformer = Transformer(text_width, text_layers, text_heads, quick_gelu=quick_gelu, causal=True)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, text_width))
        self.ln_final = LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.empty(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=text_width**-0.5)
        nn.init.constant_(self.logit_scale, 2.659260036932778)  # log(1 / 0.07)

    # -- facts read off the weights ---------------------------------------------------

    @property
    def context_length(self) -> int:
        """The number of text tokens the model takes (the positional embedding's rows)."""
        return self.positional_embedding.shape[0]

    @property
    def vocab_size(self) -> int:
        """The number of token ids the text embedding knows."""
        return self.token_embedding.num_embeddings

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the image tower's weight dtype (float16 after ``cast_model(model, torch.float16)``)."""
        visual_dtype = getattr(self.visual, "dtype", None)
        return visual_dtype if isinstance(visual_dtype, torch.dtype) else self.text_projection.dtype

    # -- encoders ------------------------------------------------------------------------

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Embed a batch of preprocessed images ``[batch, 3, R, R]`` into ``[batch, embed_dim]`` (not normalised)."""
        return self.visual(image.to(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Embed a batch of token ids ``[batch, tokens]`` into ``[batch, embed_dim]`` (not normalised).

        Each sequence is read at its end-of-text token, the highest id in the
        row (``text.argmax(dim=-1)``), as the reference does. ``tokens`` may be
        shorter than ``context_length`` but not longer.
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
        return logits_per_image, logits_per_image.t()

    # -- loading ---------------------------------------------------------------------------

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


def drop_metadata(state_dict: dict[str, Any], prefix: str) -> None:
    """Drop the archives' metadata entries (they restate the shapes) and make a one-element ``logit_scale`` 0-dim."""
    for key in _SCALAR_ATTRIBUTE_KEYS:
        state_dict.pop(prefix + key, None)
    scale = state_dict.get(prefix + "logit_scale")
    if isinstance(scale, torch.Tensor) and scale.shape == (1,):
        state_dict[prefix + "logit_scale"] = scale.reshape(())


def encode_tokens(text_tower: nn.Module, text: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The text tower's forward pass in ``dtype`` on a module holding CLIP's text attributes.

    ``text_tower`` has ``token_embedding``, ``positional_embedding``,
    ``transformer``, ``ln_final`` and ``text_projection`` (a ``CLIP``, or the
    text tower alone); each row is read at its highest token id.
    """
    tokens = text.shape[-1]
    context_length = text_tower.positional_embedding.shape[0]
    if tokens > context_length:
        raise ConfigurationError(
            f"text has {tokens} tokens but this model's context length is {context_length}; "
            f"tokenize with context_length={context_length}"
        )
    x = text_tower.token_embedding(text).to(dtype)
    x = x + text_tower.positional_embedding[:tokens].to(dtype)
    x = text_tower.transformer(x)
    x = text_tower.ln_final(x).to(dtype)
    x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
    return x @ text_tower.text_projection.to(dtype)
