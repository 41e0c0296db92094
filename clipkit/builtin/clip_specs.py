"""The built-in families' specs: ``ResNetSpec`` and ``ViTSpec``.

Both share the text tower and the joint embedding (``CLIPSpec``); they differ in
the image tower. Sizes are read off tensor shapes by the detecting plugin, as
are the variants a key's presence shows (layer scale, no ``ln_pre``, an
attentional pooler, a linear or absent text projection, a logit bias). What
the shapes cannot show (the activation, head counts, pooling rules, norm
epsilons, causal masking) starts at OpenAI's convention and is settled by a
config file, the release table or the caller (``clipkit.load(...,
quick_gelu=False)``); see ``clipkit.provenance``.
"""

from __future__ import annotations

import attrs

from clipkit.errors import ConfigurationError
from clipkit.nn.clip import TEXT_POOLS, TEXT_PROJECTIONS
from clipkit.nn.vit import POOLS
from clipkit.spec import ArchSpec, epsilon, heads_divide, positive_int

GELU_FORMS: tuple[str, ...] = ("none", "tanh")


def _boolean(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be True or False, got {value!r}"
        )


def _one_of(choices: tuple[str, ...]):
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if value not in choices:
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name} must be one of {choices}, got {value!r}"
            )

    return check


def _four_times(width_field: str):
    return attrs.Factory(lambda self: 4 * getattr(self, width_field), takes_self=True)


def _eos_id(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        if getattr(instance, "text_pool") == "eos":
            raise ConfigurationError(f"{type(instance).__name__}: text_pool='eos' needs text_eos_id")
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < getattr(instance, "vocab_size"):
        raise ConfigurationError(f"{type(instance).__name__}.text_eos_id must be a token id, got {value!r}")


@attrs.frozen(kw_only=True)
class CLIPSpec(ArchSpec):
    """Fields shared by the built-in dual encoders: the text transformer and the joint embedding.

    ``text_pool``: where a text is read (``argmax``: the highest id, OpenAI's
    end-of-text; ``last``; ``first``; ``eos``: the first ``text_eos_id``).
    ``text_proj``: ``matrix`` (``text_projection``), ``linear`` (with bias) or
    ``none``. ``logit_bias``: the model has a learned bias added to the logits.
    """

    embed_dim: int = attrs.field(validator=positive_int)
    context_length: int = attrs.field(validator=positive_int)
    vocab_size: int = attrs.field(validator=positive_int)
    text_width: int = attrs.field(validator=positive_int)
    text_layers: int = attrs.field(validator=positive_int)
    text_heads: int = attrs.field(validator=heads_divide("text_width"))
    quick_gelu: bool = attrs.field(default=True, validator=_boolean)
    text_mlp_width: int = attrs.field(default=_four_times("text_width"), validator=positive_int)
    text_layer_scale: bool = attrs.field(default=False, validator=_boolean)
    text_norm_eps: float = attrs.field(default=1e-5, validator=epsilon)
    text_gelu_approximate: str = attrs.field(default="none", validator=_one_of(GELU_FORMS))
    text_causal: bool = attrs.field(default=True, validator=_boolean)
    text_pool: str = attrs.field(default="argmax", validator=_one_of(TEXT_POOLS))
    text_eos_id: int | None = attrs.field(default=None, validator=_eos_id)
    text_proj: str = attrs.field(default="matrix", validator=_one_of(TEXT_PROJECTIONS))
    logit_bias: bool = attrs.field(default=False, validator=_boolean)

    def text_options(self) -> dict[str, object]:
        """Keyword arguments for ``clipkit.nn.CLIP``'s text tower beyond the sizes."""
        return dict(
            quick_gelu=self.quick_gelu,
            causal=self.text_causal,
            text_pool=self.text_pool,
            eos_id=self.text_eos_id,
            text_proj=self.text_proj,
            logit_bias=self.logit_bias,
            mlp_width=self.text_mlp_width,
            layer_scale=self.text_layer_scale,
            norm_eps=self.text_norm_eps,
            gelu_approximate=self.text_gelu_approximate,
        )


@attrs.frozen(kw_only=True)
class ViTSpec(CLIPSpec):
    """A CLIP whose image tower is a Vision Transformer (ViT-B/32, ViT-L/14@336px, open_clip's ViT-H/14, ...).

    ``vision_pool`` (``tok``: class token, ``avg``: mean of patch tokens) and
    ``vision_final_ln_after_pool`` are open_clip's pooling rules;
    ``vision_attn_pool_queries`` > 0 means an attentional pooler with that many
    queries and ``vision_attn_pool_heads`` heads.
    """

    family: str = "vit"
    vision_width: int = attrs.field(validator=positive_int)
    vision_layers: int = attrs.field(validator=positive_int)
    vision_heads: int = attrs.field(validator=heads_divide("vision_width"))
    vision_patch_size: int = attrs.field(validator=positive_int)
    vision_mlp_width: int = attrs.field(default=_four_times("vision_width"), validator=positive_int)
    vision_layer_scale: bool = attrs.field(default=False, validator=_boolean)
    vision_norm_eps: float = attrs.field(default=1e-5, validator=epsilon)
    vision_gelu_approximate: str = attrs.field(default="none", validator=_one_of(GELU_FORMS))
    vision_ln_pre: bool = attrs.field(default=True, validator=_boolean)
    vision_pool: str = attrs.field(default="tok", validator=_one_of(POOLS))
    vision_final_ln_after_pool: bool = attrs.field(default=False, validator=_boolean)
    vision_attn_pool_queries: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    vision_attn_pool_heads: int = attrs.field(default=8, validator=heads_divide("embed_dim"))

    def vision_options(self) -> dict[str, object]:
        """Keyword arguments for ``clipkit.nn.VisionTransformer`` beyond the sizes."""
        return dict(
            ln_pre=self.vision_ln_pre,
            pool=self.vision_pool,
            final_ln_after_pool=self.vision_final_ln_after_pool,
            attn_pool_queries=self.vision_attn_pool_queries,
            attn_pool_heads=self.vision_attn_pool_heads,
            mlp_width=self.vision_mlp_width,
            layer_scale=self.vision_layer_scale,
            norm_eps=self.vision_norm_eps,
            gelu_approximate=self.vision_gelu_approximate,
        )


def _four_stages(instance: object, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if len(value) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be four positive block counts, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class ResNetSpec(CLIPSpec):
    """A CLIP whose image tower is OpenAI's modified ResNet with attention pooling (RN50, RN50x64, ...)."""

    family: str = "resnet"
    vision_width: int = attrs.field(validator=positive_int)
    vision_layers: tuple[int, int, int, int] = attrs.field(converter=tuple, validator=_four_stages)
    vision_heads: int = attrs.field(validator=positive_int)
