"""Compatibility alias of ``clipkit.builtin.clip_specs`` (the built-in CLIP families' specs); import from there."""

from clipkit.builtin.clip_specs import CLIPSpec, ResNetSpec, ViTSpec

__all__ = ["CLIPSpec", "ResNetSpec", "ViTSpec"]
