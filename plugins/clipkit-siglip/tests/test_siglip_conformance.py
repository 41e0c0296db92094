"""clipkit-siglip passes clipkit's plugin conformance kit, tokenizer contract included, on a saved directory."""

from __future__ import annotations

import clipkit_siglip.plugin
import siglip_reference as ref
from clipkit.testing import PluginConformance
from clipkit_siglip import SiglipSpec


class TestSiglipConformance(PluginConformance):
    plugin = clipkit_siglip.plugin
    plugin_name = "siglip"
    expected_spec = SiglipSpec(  # no config beside a bare state dict: SigLIP's conventions (64-wide heads, ...)
        image_resolution=32, embed_dim=64, context_length=16, vocab_size=ref.VOCAB, text_width=64, text_layers=1,
        text_heads=1, text_mlp_width=96, vision_width=64, vision_layers=1, vision_heads=1, vision_mlp_width=80,
        vision_patch_size=8,
    )

    def sample_state_dict(self):
        sizes = dict(text_width=64, text_heads=1, text_mlp=96, vision_width=64, vision_heads=1, vision_mlp=80)
        return ref.make_siglip(layers=1, seed=21, **sizes).state_dict()

    def sample_checkpoint(self, directory):
        ref.save_checkpoint(ref.make_siglip(layers=1, seed=22), directory / "siglip")
        return directory / "siglip"
