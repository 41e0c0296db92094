"""One tower of a CLIP on its own: the image encoder or the text encoder, under the full model's key names.

A tower module shares its submodules with the ``CLIP`` it was cut from, so
cutting a model built on the meta device allocates nothing. Its ``state_dict()``
keys are exactly the full model's keys for that tower (``visual.*`` and
``logit_scale``; or the text transformer, embeddings, ``ln_final``,
``text_projection`` and ``logit_scale``), so a checkpoint loads into it by
name with the other tower's entries left untouched.
"""

from __future__ import annotations

import torch

from clipkit.errors import ConfigurationError
from clipkit.nn.clip import CLIP, DropsArchiveMetadata, TextFacts, encode_tokens

__all__ = ["ImageTower", "TextTower", "TOWERS", "split_tower"]

#: the tower names ``clipkit.load(..., tower=...)`` accepts
TOWERS: tuple[str, ...] = ("image", "text")


class _Tower(DropsArchiveMetadata):
    """What both towers share: ``logit_scale`` kept float32, and the archives' metadata dropped on load."""

    fp32_parameters: tuple[str, ...] = ("logit_scale", "logit_bias")

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.embed_dim = model.embed_dim
        self.logit_scale = model.logit_scale
        if getattr(model, "logit_bias", None) is not None:
            self.logit_bias = model.logit_bias


class ImageTower(_Tower):
    """A CLIP's image encoder alone: ``visual`` (projection included) and ``logit_scale``.

    ``encode_image`` (also ``forward``) gives the same features as the full
    model's ``encode_image``.
    """

    def __init__(self, model: CLIP) -> None:
        super().__init__(model)
        self.visual = model.visual

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the image tower's weight dtype."""
        return self.visual.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Embed a batch of preprocessed images ``[batch, 3, H, W]`` into ``[batch, embed_dim]`` (not normalised)."""
        return self.visual(image.to(self.dtype))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Same as ``encode_image``."""
        return self.encode_image(image)


class TextTower(_Tower, TextFacts):
    """A CLIP's text encoder alone: the causal transformer, its embeddings, ``ln_final``, ``text_projection``, ``logit_scale``.

    ``encode_text`` (also ``forward``) gives the same features as the full
    model's ``encode_text``.
    """

    def __init__(self, model: CLIP) -> None:
        super().__init__(model)
        self.transformer = model.transformer
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.text_pool = model.text_pool
        self.eos_id = model.eos_id

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the text transformer's weights' (the full model's: every matrix is cast alike)."""
        return self.transformer.resblocks[0].mlp.c_fc.weight.dtype

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Embed a batch of token ids ``[batch, tokens]`` into ``[batch, embed_dim]`` (not normalised)."""
        return encode_tokens(self, text, self.dtype)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Same as ``encode_text``."""
        return self.encode_text(text)


def split_tower(model: CLIP, tower: str) -> ImageTower | TextTower:
    """The ``tower`` (``"image"`` or ``"text"``) of ``model``, sharing its submodules and parameters."""
    if tower == "image":
        return ImageTower(model)
    if tower == "text":
        return TextTower(model)
    raise ConfigurationError(f"tower must be one of {', '.join(map(repr, TOWERS))}, got {tower!r}")
