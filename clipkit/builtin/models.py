"""Registers the nine official OpenAI CLIP releases by name: URL and SHA-256, then their Hub copies (data, no code).

Each entry also carries its release table row (``ModelSource.architecture``):
the spec as OpenAI published it, so a file known to be the release (by name or
digest) has every field the shapes cannot show settled without a guess.

Tests point a name at loopback servers by replacing its entry in
``OFFICIAL_MODELS`` (``attrs.evolve``) and reloading the plugins.
"""

from __future__ import annotations

from clipkit.hookspecs import hookimpl
from clipkit.releases import OFFICIAL_FILES, OFFICIAL_HUB_COPIES, OFFICIAL_RELEASES, official_url
from clipkit.spec import CLIP_MEAN, CLIP_STD, AlternateSource, ModelSource

__all__ = ["OFFICIAL_FILES", "OFFICIAL_MODELS", "RELEASE_TABLE", "register_models"]


def _alternates(name: str) -> tuple[AlternateSource, ...]:
    open_clip_repo, transformers_repo = OFFICIAL_HUB_COPIES[name]
    found = [AlternateSource(source=f"hf-hub:{open_clip_repo}", description="open_clip's copy on the Hugging Face Hub")]
    if transformers_repo:
        found.append(AlternateSource(source=f"hf-hub:{transformers_repo}", requires="clipkit-hf",
                                     description="transformers' copy on the Hugging Face Hub"))
    return tuple(found)


#: what every release shares: OpenAI's text tower, activation, pooling and preprocessing
_OPENAI: dict[str, object] = dict(
    quick_gelu=True, context_length=77, vocab_size=49408, text_layers=12, text_layer_scale=False,
    text_norm_eps=1e-5, text_gelu_approximate="none", text_causal=True, text_pool="argmax", text_eos_id=None,
    text_proj="matrix", logit_bias=False, image_mean=CLIP_MEAN, image_std=CLIP_STD, interpolation="bicubic",
    resize_mode="shortest", fill_color=0, resize_to=None,
)


def _release(family: str, resolution: int, embed_dim: int, text_width: int, width: int, layers: object,
             patch: int | None = None) -> dict[str, object]:
    """One release table row: the sizes that differ between releases, the rest OpenAI's."""
    row = dict(_OPENAI, family=family, image_resolution=resolution, embed_dim=embed_dim, text_width=text_width,
               text_heads=text_width // 64, text_mlp_width=4 * text_width, vision_width=width, vision_layers=layers)
    if family == "resnet":
        return {**row, "vision_heads": width * 32 // 64}
    return {**row, "vision_heads": width // 64, "vision_patch_size": patch, "vision_mlp_width": 4 * width,
            "vision_layer_scale": False, "vision_norm_eps": 1e-5, "vision_gelu_approximate": "none",
            "vision_ln_pre": True, "vision_pool": "tok", "vision_final_ln_after_pool": False,
            "vision_attn_pool_queries": 0, "vision_attn_pool_heads": 8}


#: the release table: each official release's architecture as published
RELEASE_TABLE: dict[str, dict[str, object]] = {
    "RN50": _release("resnet", 224, 1024, 512, 64, (3, 4, 6, 3)),
    "RN101": _release("resnet", 224, 512, 512, 64, (3, 4, 23, 3)),
    "RN50x4": _release("resnet", 288, 640, 640, 80, (4, 6, 10, 6)),
    "RN50x16": _release("resnet", 384, 768, 768, 96, (6, 8, 18, 8)),
    "RN50x64": _release("resnet", 448, 1024, 1024, 128, (3, 15, 36, 10)),
    "ViT-B/32": _release("vit", 224, 512, 512, 768, 12, 32),
    "ViT-B/16": _release("vit", 224, 512, 512, 768, 12, 16),
    "ViT-L/14": _release("vit", 224, 768, 768, 1024, 24, 14),
    "ViT-L/14@336px": _release("vit", 336, 768, 768, 1024, 24, 14),
}

#: Each name's original URL (its SHA-256 in the path), then its copies on the Hub, in the order they are tried.
OFFICIAL_MODELS: dict[str, ModelSource] = {
    name: ModelSource(url=official_url(name), sha256=digest, alternates=_alternates(name),
                      description="OpenAI CLIP (TorchScript release)", architecture=RELEASE_TABLE[name])
    for name, (digest, _) in OFFICIAL_RELEASES.items()
}


@hookimpl
def register_models() -> dict[str, ModelSource]:
    """Offer the official release names, in the reference's order."""
    return dict(OFFICIAL_MODELS)
