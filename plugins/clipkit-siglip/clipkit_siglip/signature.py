"""The key signature clipkit-siglip claims: what every transformers ``SiglipModel`` state dict has.

Kept free of everything else so the plugin module, which clipkit imports at
start-up in every process, imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SIGNATURE", "is_siglip"]

#: both towers' embeddings, the text head, and the sigmoid loss's ``logit_scale`` and ``logit_bias``
SIGNATURE: tuple[str, ...] = (
    "logit_bias",
    "logit_scale",
    "text_model.embeddings.token_embedding.weight",
    "text_model.head.weight",
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.position_embedding.weight",
)


def is_siglip(state_dict: Mapping[str, Any]) -> bool:
    """True when ``state_dict`` has every key of the SigLIP signature (``SIGNATURE``)."""
    return all(key in state_dict for key in SIGNATURE)
