"""``SiglipSpec``: a SigLIP checkpoint's architecture, preprocessing and tokenizer, each field with its provenance.

Shapes give every size (widths, depths, MLP widths, patch size, resolution,
context, vocabulary, joint width). What shapes cannot show comes from the files
transformers saves beside the weights (``config.json``: head counts,
activations, LayerNorm epsilons; ``preprocessor_config.json``: mean, std,
resample; ``tokenizer_config.json`` / ``spiece.model``: the tokenizer), else
from SigLIP's conventions, recorded as such so that ``clipkit.load`` warns.
"""

from __future__ import annotations

from typing import Any

import attrs

from clipkit import ArchSpec
from clipkit.errors import ConfigurationError
from clipkit.spec import epsilon, heads_divide, positive_int

__all__ = ["INTERPOLATIONS", "SiglipSpec", "siglip_heads"]

#: PIL's resample codes (``preprocessor_config.json``'s ``resample``) by the name torchvision gives them
INTERPOLATIONS: dict[str, int] = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _activation(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    from clipkit_siglip.model import ACTIVATIONS

    if value not in ACTIVATIONS:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name}={value!r} is not an activation clipkit-siglip runs; "
            f"supported: {', '.join(ACTIVATIONS)}"
        )


def _triple(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if len(value) != 3 or not all(isinstance(v, float) for v in value):
        raise ConfigurationError(f"{type(instance).__name__}.{attribute.name} must be three numbers (R, G, B), got {value!r}")


def _floats(value: Any) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"expected three numbers (R, G, B), got {value!r}") from None


def _interpolation(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in INTERPOLATIONS:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name}={value!r} is not one of {', '.join(INTERPOLATIONS)}"
        )


def _squash(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value != "squash":
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name}={value!r}: SigLIP's fixed-resolution towers take the whole "
            "image squashed to their square input ('squash'); clipkit-siglip does not crop or pad"
        )


def _optional_str(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{type(instance).__name__}.{attribute.name} must be a string or None, got {value!r}")


@attrs.frozen(kw_only=True)
class SiglipSpec(ArchSpec):
    """A transformers ``SiglipModel`` (SigLIP, or SigLIP 2 at a fixed resolution).

    Sizes are read off the shapes; ``*_heads``, ``*_act``, ``*_layer_norm_eps``
    come from ``config.json``; ``image_mean``, ``image_std`` and
    ``interpolation`` (a torchvision name) from ``preprocessor_config.json``.
    ``resize_mode`` is always ``"squash"`` (no crop, no padding, so
    ``fill_color`` and ``resize_to`` are unused). ``tokenizer_dir`` is the directory holding the tokenizer files and
    ``tokenizer_class`` what ``tokenizer_config.json`` names (``None`` when
    there are none). The model's logits are sigmoid logits (``score``).
    """

    family: str = "siglip"
    embed_dim: int = attrs.field(validator=positive_int)
    context_length: int = attrs.field(validator=positive_int)
    vocab_size: int = attrs.field(validator=positive_int)
    text_width: int = attrs.field(validator=positive_int)
    text_layers: int = attrs.field(validator=positive_int)
    text_heads: int = attrs.field(validator=heads_divide("text_width"))
    text_mlp_width: int = attrs.field(validator=positive_int)
    vision_width: int = attrs.field(validator=positive_int)
    vision_layers: int = attrs.field(validator=positive_int)
    vision_heads: int = attrs.field(validator=heads_divide("vision_width"))
    vision_mlp_width: int = attrs.field(validator=positive_int)
    vision_patch_size: int = attrs.field(validator=positive_int)
    text_act: str = attrs.field(default="gelu_pytorch_tanh", validator=_activation)
    vision_act: str = attrs.field(default="gelu_pytorch_tanh", validator=_activation)
    text_layer_norm_eps: float = attrs.field(default=1e-6, validator=epsilon)
    vision_layer_norm_eps: float = attrs.field(default=1e-6, validator=epsilon)
    image_mean: tuple[float, ...] = attrs.field(default=(0.5, 0.5, 0.5), converter=_floats, validator=_triple)
    image_std: tuple[float, ...] = attrs.field(default=(0.5, 0.5, 0.5), converter=_floats, validator=_triple)
    interpolation: str = attrs.field(default="bicubic", validator=_interpolation)
    resize_mode: str = attrs.field(default="squash", validator=_squash)
    tokenizer_dir: str | None = attrs.field(default=None, validator=_optional_str)
    tokenizer_class: str | None = attrs.field(default=None, validator=_optional_str)

    @property
    def score(self) -> str:
        """``"sigmoid"``: the logits are per-pair sigmoid logits (``logit_scale.exp() * cos + logit_bias``)."""
        return "sigmoid"


#: SigLIP's released tower widths whose heads are not 64 wide (so400m: 16 heads of 72; giant: 16 of 96)
_RELEASED_HEADS = {1152: 16, 1536: 16}


def siglip_heads(width: int) -> tuple[int, str]:
    """The head count SigLIP's released towers use at ``width``, and the convention it follows (for provenance)."""
    if width in _RELEASED_HEADS:
        heads = _RELEASED_HEADS[width]
        return heads, f"SigLIP's {width}-wide towers use {heads} heads of {width // heads}"
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads, "64-wide heads, as SigLIP's base and large towers"
