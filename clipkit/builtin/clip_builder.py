"""The built-in families' CLIP: the OpenAI text tower and joint embedding a ``CLIPSpec`` describes, around an image tower."""

from __future__ import annotations

import torch

from clipkit.builtin.clip_specs import CLIPSpec
from clipkit.nn import CLIP


def build_clip(visual: torch.nn.Module, spec: CLIPSpec) -> CLIP:
    """The dual encoder around ``visual`` with the text tower and joint embedding ``spec`` describes."""
    return CLIP(
        visual,
        embed_dim=spec.embed_dim,
        context_length=spec.context_length,
        vocab_size=spec.vocab_size,
        text_width=spec.text_width,
        text_layers=spec.text_layers,
        text_heads=spec.text_heads,
        **spec.text_options(),
    )
