"""Random-weight CLIP checkpoints in the official (OpenAI) layout, built in code from shapes alone.

The one writer of "what an official checkpoint looks like", for clipkit's own
tests and for plugin authors: it writes every key and shape from an
architecture (``CLIPConfig``) without importing ``clipkit.nn``, so a layout bug
in clipkit's modules cannot hide behind a builder that shares it. Values are
random but well conditioned (OpenAI's initialisation scales, LayerNorm and
BatchNorm statistics near identity), and dtypes follow the official releases:
the tensors OpenAI's ``convert_weights`` halves (convolution and linear weights
and biases, attention ``in_proj_*``, ``text_projection`` and ``visual.proj``)
are ``dtype``, everything else float32.

- ``CLIPConfig``: one architecture; ``.family``, ``.text_heads``, ``.vision_heads``, ``.spec()``.
- ``OFFICIAL_CONFIGS``: the nine released architectures by official name.
- ``TINY_VIT``, ``TINY_RESNET``, ``TINY_CONFIGS``: small architectures for fast tests.
- ``make_state_dict(config, *, seed=0, dtype=torch.float16, device="cpu", with_jit_metadata=False)``.
- ``openai_vit_state_dict(seed=)``, ``openai_resnet_state_dict(seed=)``: the conformance kit's
  tiny float32 stand-ins for "a checkpoint that is not yours".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from clipkit.archive import METADATA_KEYS

__all__ = [
    "CLIPConfig",
    "OFFICIAL_CONFIGS",
    "TINY_CONFIGS",
    "TINY_RESNET",
    "TINY_VIT",
    "make_state_dict",
    "openai_resnet_state_dict",
    "openai_vit_state_dict",
]


@dataclass(frozen=True)
class CLIPConfig:
    """One CLIP architecture in OpenAI's terms.

    ``vision_patch_size`` is ``None`` for the modified ResNet, whose
    ``vision_layers`` is then a 4-tuple of stage depths (an int for a ViT).
    Head counts default to OpenAI's convention: 64-wide heads for the text and
    ViT towers, ``vision_width * 32 // 64`` for the ResNet attention pool.
    """

    name: str
    embed_dim: int
    image_resolution: int
    vision_layers: int | tuple[int, int, int, int]
    vision_width: int
    vision_patch_size: int | None
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads_override: int | None = None
    vision_heads_override: int | None = None

    @property
    def family(self) -> str:
        """``"vit"`` or ``"resnet"``."""
        return "resnet" if self.vision_patch_size is None else "vit"

    @property
    def text_heads(self) -> int:
        """Heads of the text transformer (``text_width // 64`` unless overridden)."""
        return self.text_heads_override or max(1, self.text_width // 64)

    @property
    def vision_heads(self) -> int:
        """Heads of the ViT transformer or of the ResNet attention pool."""
        if self.vision_heads_override:
            return self.vision_heads_override
        width = self.vision_width * 32 if self.family == "resnet" else self.vision_width
        return max(1, width // 64)

    def spec(self, *, quick_gelu: bool = True) -> Any:
        """The ``clipkit`` spec a detector should infer for this architecture (imports clipkit's spec classes)."""
        from clipkit.builtin.clip_specs import ResNetSpec, ViTSpec

        shared = ("image_resolution", "embed_dim", "context_length", "vocab_size", "text_width", "text_layers",
                  "text_heads", "vision_width", "vision_heads")
        common = {name: getattr(self, name) for name in shared}
        common["quick_gelu"] = quick_gelu
        if self.family == "resnet":
            return ResNetSpec(vision_layers=tuple(self.vision_layers), **common)
        return ViTSpec(vision_layers=self.vision_layers, vision_patch_size=self.vision_patch_size, **common)

    def with_(self, **changes: Any) -> CLIPConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)


OFFICIAL_CONFIGS: dict[str, CLIPConfig] = {
    "RN50": CLIPConfig("RN50", 1024, 224, (3, 4, 6, 3), 64, None),
    "RN101": CLIPConfig("RN101", 512, 224, (3, 4, 23, 3), 64, None),
    "RN50x4": CLIPConfig("RN50x4", 640, 288, (4, 6, 10, 6), 80, None, text_width=640),
    "RN50x16": CLIPConfig("RN50x16", 768, 384, (6, 8, 18, 8), 96, None, text_width=768),
    "RN50x64": CLIPConfig("RN50x64", 1024, 448, (3, 15, 36, 10), 128, None, text_width=1024),
    "ViT-B/32": CLIPConfig("ViT-B/32", 512, 224, 12, 768, 32),
    "ViT-B/16": CLIPConfig("ViT-B/16", 512, 224, 12, 768, 16),
    "ViT-L/14": CLIPConfig("ViT-L/14", 768, 224, 24, 1024, 14, text_width=768),
    "ViT-L/14@336px": CLIPConfig("ViT-L/14@336px", 768, 336, 24, 1024, 14, text_width=768),
}

TINY_VIT = CLIPConfig(
    "tiny-vit", embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
    context_length=16, vocab_size=1000, text_width=64, text_layers=2,
)
TINY_RESNET = CLIPConfig(
    "tiny-resnet", embed_dim=32, image_resolution=64, vision_layers=(1, 2, 1, 1), vision_width=16,
    vision_patch_size=None, context_length=16, vocab_size=1000, text_width=64, text_layers=2,
)
TINY_CONFIGS: dict[str, CLIPConfig] = {"tiny-vit": TINY_VIT, "tiny-resnet": TINY_RESNET}


# -- state dicts ---------------------------------------------------------------------------


class _Filler:
    """Makes each tensor: random on a real device from one seeded generator, empty on ``meta``."""

    def __init__(self, seed: int, dtype: torch.dtype, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.low = dtype
        self.gen = torch.Generator().manual_seed(seed)

    def _make(self, shape: tuple[int, ...], values: Any, low: bool) -> torch.Tensor:
        dtype = self.low if low else torch.float32
        if self.device.type == "meta":
            return torch.empty(shape, dtype=dtype, device="meta")
        return values().to(dtype=dtype, device=self.device)

    def normal(self, shape: tuple[int, ...], std: float, *, mean: float = 0.0, low: bool = False) -> torch.Tensor:
        return self._make(shape, lambda: torch.randn(shape, generator=self.gen) * std + mean, low)

    def uniform(self, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return self._make(shape, lambda: torch.rand(shape, generator=self.gen) * (hi - lo) + lo, False)

    def constant(self, shape: tuple[int, ...], value: float, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        if self.device.type == "meta":
            return torch.empty(shape, dtype=dtype or torch.float32, device="meta")
        return torch.full(shape, value, dtype=dtype or torch.float32, device=self.device)


def _layer_norm(f: _Filler, prefix: str, width: int) -> Iterator[tuple[str, torch.Tensor]]:
    yield f"{prefix}.weight", f.normal((width,), 0.1, mean=1.0)
    yield f"{prefix}.bias", f.normal((width,), 0.1)


def _batch_norm(f: _Filler, prefix: str, channels: int, *, gamma: float = 1.0) -> Iterator[tuple[str, torch.Tensor]]:
    yield f"{prefix}.weight", f.normal((channels,), 0.1 * gamma, mean=gamma)
    yield f"{prefix}.bias", f.normal((channels,), 0.1)
    yield f"{prefix}.running_mean", f.normal((channels,), 0.1)
    yield f"{prefix}.running_var", f.uniform((channels,), 0.5, 1.5)
    yield f"{prefix}.num_batches_tracked", f.constant((), 0, dtype=torch.long)


def _transformer(f: _Filler, prefix: str, width: int, layers: int) -> Iterator[tuple[str, torch.Tensor]]:
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    fc_std = (2 * width) ** -0.5
    for i in range(layers):
        block = f"{prefix}.resblocks.{i}"
        yield f"{block}.attn.in_proj_weight", f.normal((3 * width, width), attn_std, low=True)
        yield f"{block}.attn.in_proj_bias", f.normal((3 * width,), 0.02, low=True)
        yield f"{block}.attn.out_proj.weight", f.normal((width, width), proj_std, low=True)
        yield f"{block}.attn.out_proj.bias", f.normal((width,), 0.02, low=True)
        yield from _layer_norm(f, f"{block}.ln_1", width)
        yield f"{block}.mlp.c_fc.weight", f.normal((4 * width, width), fc_std, low=True)
        yield f"{block}.mlp.c_fc.bias", f.normal((4 * width,), 0.02, low=True)
        yield f"{block}.mlp.c_proj.weight", f.normal((width, 4 * width), proj_std, low=True)
        yield f"{block}.mlp.c_proj.bias", f.normal((width,), 0.02, low=True)
        yield from _layer_norm(f, f"{block}.ln_2", width)


def _conv(f: _Filler, key: str, out_ch: int, in_ch: int, k: int) -> tuple[str, torch.Tensor]:
    return key, f.normal((out_ch, in_ch, k, k), math.sqrt(2.0 / (in_ch * k * k)), low=True)


def _vit_visual(f: _Filler, c: CLIPConfig) -> Iterator[tuple[str, torch.Tensor]]:
    width, patch = c.vision_width, c.vision_patch_size
    assert patch is not None and isinstance(c.vision_layers, int)
    grid = c.image_resolution // patch
    yield "visual.class_embedding", f.normal((width,), width**-0.5)
    yield "visual.positional_embedding", f.normal((grid * grid + 1, width), width**-0.5)
    yield "visual.proj", f.normal((width, c.embed_dim), width**-0.5, low=True)
    yield "visual.conv1.weight", f.normal((width, 3, patch, patch), (3 * patch * patch) ** -0.5, low=True)
    yield from _layer_norm(f, "visual.ln_pre", width)
    yield from _transformer(f, "visual.transformer", width, c.vision_layers)
    yield from _layer_norm(f, "visual.ln_post", width)


def _bottleneck(f: _Filler, prefix: str, inplanes: int, planes: int, stride: int) -> Iterator[tuple[str, torch.Tensor]]:
    yield _conv(f, f"{prefix}.conv1.weight", planes, inplanes, 1)
    yield from _batch_norm(f, f"{prefix}.bn1", planes)
    yield _conv(f, f"{prefix}.conv2.weight", planes, planes, 3)
    yield from _batch_norm(f, f"{prefix}.bn2", planes)
    yield _conv(f, f"{prefix}.conv3.weight", planes * 4, planes, 1)
    yield from _batch_norm(f, f"{prefix}.bn3", planes * 4, gamma=0.3)  # keep the residual stream tame
    if stride > 1 or inplanes != planes * 4:
        yield _conv(f, f"{prefix}.downsample.0.weight", planes * 4, inplanes, 1)
        yield from _batch_norm(f, f"{prefix}.downsample.1", planes * 4)


def _resnet_visual(f: _Filler, c: CLIPConfig) -> Iterator[tuple[str, torch.Tensor]]:
    width = c.vision_width
    assert not isinstance(c.vision_layers, int)
    yield _conv(f, "visual.conv1.weight", width // 2, 3, 3)
    yield from _batch_norm(f, "visual.bn1", width // 2)
    yield _conv(f, "visual.conv2.weight", width // 2, width // 2, 3)
    yield from _batch_norm(f, "visual.bn2", width // 2)
    yield _conv(f, "visual.conv3.weight", width, width // 2, 3)
    yield from _batch_norm(f, "visual.bn3", width)
    inplanes = width
    for stage, blocks in enumerate(c.vision_layers):
        planes = width * 2**stage
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            yield from _bottleneck(f, f"visual.layer{stage + 1}.{i}", inplanes, planes, stride)
            inplanes = planes * 4
    pool_width = width * 32
    spatial = c.image_resolution // 32
    std = pool_width**-0.5
    yield "visual.attnpool.positional_embedding", f.normal((spatial * spatial + 1, pool_width), std)
    for name in ("k_proj", "q_proj", "v_proj"):
        yield f"visual.attnpool.{name}.weight", f.normal((pool_width, pool_width), std, low=True)
        yield f"visual.attnpool.{name}.bias", f.normal((pool_width,), 0.02, low=True)
    yield "visual.attnpool.c_proj.weight", f.normal((c.embed_dim, pool_width), std, low=True)
    yield "visual.attnpool.c_proj.bias", f.normal((c.embed_dim,), 0.02, low=True)


def make_state_dict(
    config: CLIPConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    with_jit_metadata: bool = False,
) -> dict[str, torch.Tensor]:
    """Build a random CLIP state dict for ``config`` in the official layout and key order.

    ``dtype`` is the dtype of the tensors OpenAI's ``convert_weights`` lowers
    (``torch.float32`` gives an all-fp32 dict); everything else is float32 and
    ``num_batches_tracked`` is int64. ``device="meta"`` returns shape-only
    tensors instantly (for detection tests of the big architectures).
    ``with_jit_metadata`` adds the official archives' 0-dim int64
    ``input_resolution``, ``context_length`` and ``vocab_size`` entries. The same
    ``seed`` always gives the same values.
    """
    f = _Filler(seed, dtype, device)
    w = config.text_width
    items: list[tuple[str, torch.Tensor]] = [
        ("positional_embedding", f.normal((config.context_length, w), 0.01)),
        ("text_projection", f.normal((w, config.embed_dim), w**-0.5, low=True)),
        ("logit_scale", f.constant((), math.log(1 / 0.07))),
    ]
    if with_jit_metadata:
        for key, value in zip(
            METADATA_KEYS, (config.image_resolution, config.context_length, config.vocab_size)
        ):
            items.append((key, f.constant((), value, dtype=torch.long)))
    items += list(_vit_visual(f, config) if config.family == "vit" else _resnet_visual(f, config))
    items += list(_transformer(f, "transformer", w, config.text_layers))
    items.append(("token_embedding.weight", f.normal((config.vocab_size, w), 0.02)))
    items += list(_layer_norm(f, "ln_final", w))
    return dict(items)


# -- the conformance kit's samples ---------------------------------------------------------------

_KIT_TEXT = dict(embed_dim=16, context_length=8, vocab_size=64, text_width=32, text_layers=1)
_KIT_VIT = TINY_VIT.with_(name="kit-vit", image_resolution=16, vision_layers=1, vision_width=32, **_KIT_TEXT)
_KIT_RESNET = TINY_RESNET.with_(name="kit-resnet", image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8,
                                **_KIT_TEXT)


def openai_vit_state_dict(*, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random CLIP ViT in OpenAI's official key layout (16 px images, 8 px patches, one block per tower).

    The built-in ``clipkit.builtin.vit`` plugin claims it; no other plugin
    should. Every tensor is float32; the same ``seed`` gives the same values.
    """
    return make_state_dict(_KIT_VIT, seed=seed, dtype=torch.float32)


def openai_resnet_state_dict(*, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random CLIP ResNet in OpenAI's official key layout (32 px images, width 8, one block per stage).

    The built-in ``clipkit.builtin.resnet`` plugin claims it; no other plugin
    should. Every tensor is float32 (``num_batches_tracked`` int64).
    """
    return make_state_dict(_KIT_RESNET, seed=seed, dtype=torch.float32)
