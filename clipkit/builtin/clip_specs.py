"""The built-in families' specs: ``ResNetSpec`` and ``ViTSpec``.

Both share the text tower and the joint embedding (``CLIPSpec``); they differ in
the image tower. Every field but ``quick_gelu`` and the head counts is read off
tensor shapes by the detecting plugin; those three are conventions the shapes
cannot show, so they carry the official defaults and can be overridden through
``clipkit.load(..., quick_gelu=False)``.
"""

from __future__ import annotations

import attrs

from clipkit.errors import ConfigurationError
from clipkit.spec import ArchSpec, _positive


def _divides(width_field: str):
    def check(instance: object, attribute: attrs.Attribute, heads: int) -> None:
        _positive(instance, attribute, heads)
        width = getattr(instance, width_field)
        if width % heads:
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name}={heads} does not divide "
                f"{width_field}={width}; choose a head count that divides the width"
            )

    return check


def _boolean(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be True or False, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class CLIPSpec(ArchSpec):
    """Fields shared by the built-in dual encoders: the text transformer and the joint embedding."""

    embed_dim: int = attrs.field(validator=_positive)
    context_length: int = attrs.field(validator=_positive)
    vocab_size: int = attrs.field(validator=_positive)
    text_width: int = attrs.field(validator=_positive)
    text_layers: int = attrs.field(validator=_positive)
    text_heads: int = attrs.field(validator=_divides("text_width"))
    quick_gelu: bool = attrs.field(default=True, validator=_boolean)


@attrs.frozen(kw_only=True)
class ViTSpec(CLIPSpec):
    """A CLIP whose image tower is a Vision Transformer (ViT-B/32, ViT-L/14@336px, ...)."""

    family: str = "vit"
    vision_width: int = attrs.field(validator=_positive)
    vision_layers: int = attrs.field(validator=_positive)
    vision_heads: int = attrs.field(validator=_divides("vision_width"))
    vision_patch_size: int = attrs.field(validator=_positive)


def _four_stages(instance: object, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if len(value) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be four positive block counts, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class ResNetSpec(CLIPSpec):
    """A CLIP whose image tower is OpenAI's modified ResNet with attention pooling (RN50, RN50x64, ...)."""

    family: str = "resnet"
    vision_width: int = attrs.field(validator=_positive)
    vision_layers: tuple[int, int, int, int] = attrs.field(converter=tuple, validator=_four_stages)
    vision_heads: int = attrs.field(validator=_positive)
