"""transformers-format SigLIP / SigLIP 2 (SiglipModel): claims state dicts with logit_bias, text_model.head.weight and vision_model.embeddings.patch_embedding.weight.

This module is the plugin clipkit registers through the ``clipkit`` entry point
``siglip``: detection (shapes plus ``config.json``), clipkit-siglip's own
pure-torch model, SigLIP's preprocessing and its SentencePiece tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipkit import hookimpl
from clipkit.errors import ConfigurationError
from clipkit_siglip.model import SiglipCLIP, SiglipTextTower, SiglipVisionTower
from clipkit_siglip.spec import SiglipSpec
from clipkit_siglip.signature import is_siglip
from clipkit_siglip.tokenizer import SPIECE, SiglipTokenizer
from clipkit_siglip.transform import SiglipTransform

#: ``tokenizer_config.json`` classes read with ``spiece.model`` (SigLIP's SentencePiece tokenizer)
SENTENCEPIECE_CLASSES = ("SiglipTokenizer", "SiglipTokenizerFast")


@hookimpl
def detect_architecture(state_dict: Mapping[str, torch.Tensor], path: Path | None) -> SiglipSpec | None:
    """Claim a transformers ``SiglipModel`` state dict and describe it; ``None`` for any other layout."""
    if not is_siglip(state_dict):
        return None
    # imported on first claim: clipkit imports this module in every process, most never see a SigLIP file
    from clipkit_siglip.detect import infer_spec

    return infer_spec(state_dict, path)


def build_siglip(spec: SiglipSpec) -> SiglipCLIP:
    """The ``SiglipCLIP`` for ``spec`` (on the current default device; clipkit builds it on meta)."""
    text = SiglipTextTower(
        vocab_size=spec.vocab_size, context_length=spec.context_length, width=spec.text_width,
        layers=spec.text_layers, heads=spec.text_heads, mlp_width=spec.text_mlp_width, embed_dim=spec.embed_dim,
        act=spec.text_act, eps=spec.text_layer_norm_eps,
    )
    vision = SiglipVisionTower(
        resolution=spec.image_resolution, patch_size=spec.vision_patch_size, width=spec.vision_width,
        layers=spec.vision_layers, heads=spec.vision_heads, mlp_width=spec.vision_mlp_width,
        act=spec.vision_act, eps=spec.vision_layer_norm_eps,
    )
    return SiglipCLIP(text, vision)


@hookimpl
def build_model(spec: Any) -> SiglipCLIP | None:
    """Build the SigLIP model for a ``SiglipSpec``; ``None`` for other specs."""
    return build_siglip(spec) if isinstance(spec, SiglipSpec) else None


@hookimpl
def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], spec: Any, target: Any) -> dict[str, torch.Tensor] | None:
    """A SigLIP state dict with its patch positions resized for ``target`` (another square input size)."""
    if not isinstance(spec, SiglipSpec):
        return None
    from clipkit_siglip.adapting import resize_siglip_state_dict

    return resize_siglip_state_dict(state_dict, spec, target)


@hookimpl
def select_tower(model: torch.nn.Module, tower: str) -> torch.nn.Module | None:
    """One tower of a SigLIP model (``clipkit.load(..., tower="image"|"text")``); ``None`` for other models."""
    if not isinstance(model, SiglipCLIP):
        return None
    from clipkit_siglip.adapting import split_siglip

    return split_siglip(model, tower)


@hookimpl
def make_transform(spec: Any) -> SiglipTransform | None:
    """SigLIP's squash-resize preprocessing for a ``SiglipSpec``; ``None`` for other specs."""
    if not isinstance(spec, SiglipSpec):
        return None
    return SiglipTransform(spec.image_resolution, spec.image_mean, spec.image_std, spec.interpolation)


@hookimpl
def make_tokenizer(spec: Any) -> SiglipTokenizer | None:
    """SigLIP's SentencePiece tokenizer (``spiece.model``) for a ``SiglipSpec``; ``None`` for other specs.

    A checkpoint without tokenizer files, or with another tokenizer (SigLIP 2's
    Gemma tokenizer), raises ``UnsupportedConfigError`` naming what is missing.
    """
    if not isinstance(spec, SiglipSpec):
        return None
    if spec.tokenizer_dir is None:
        raise ConfigurationError(
            "this SigLIP checkpoint has no tokenizer files beside its weights (spiece.model, tokenizer_config.json); "
            "load it from its save_pretrained directory, or copy the tokenizer files next to the weights"
        )
    directory = Path(spec.tokenizer_dir)
    from clipkit.errors import UnsupportedConfigError

    if spec.tokenizer_class not in SENTENCEPIECE_CLASSES or not (directory / SPIECE).is_file():
        raise UnsupportedConfigError(
            f"{directory} ships a {spec.tokenizer_class or 'tokenizer.json'} tokenizer (SigLIP 2's Gemma tokenizer "
            f"has tokenizer.model / tokenizer.json); clipkit-siglip tokenizes with SigLIP's SentencePiece "
            f"{SPIECE} (SiglipTokenizer), which is missing. The model itself loads: tokenize with the tokenizer "
            "shipped with it (transformers' AutoTokenizer on lower-cased text, as SigLIP 2 was trained; "
            "padding='max_length', max_length=64) and pass the ids to model.encode_text",
            field="tokenizer_class", path=str(directory / "tokenizer_config.json"),
        )
    return SiglipTokenizer(directory, context_length=spec.context_length, vocab_size=spec.vocab_size)
