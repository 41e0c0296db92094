"""clipkit-hf passes clipkit's plugin conformance kit, on a ``save_pretrained`` directory."""

from __future__ import annotations

import hf_reference as ref
import clipkit_hf.plugin
from clipkit.testing import PluginConformance
from clipkit_hf import HFCLIPSpec


class TestHFCLIPConformance(PluginConformance):
    plugin = clipkit_hf.plugin
    plugin_name = "hf"
    expected_spec = HFCLIPSpec(
        image_resolution=32, embed_dim=32, context_length=16, vocab_size=100, text_width=64, text_layers=2,
        text_heads=1, vision_width=64, vision_layers=2, vision_heads=1, vision_patch_size=8,
    )

    def sample_state_dict(self):
        return ref.make_clip(text_heads=1, vision_heads=1, seed=21).state_dict()

    def sample_checkpoint(self, directory):
        ref.make_clip(text_act="gelu", vision_act="gelu", seed=22).save_pretrained(directory / "clip")
        return directory / "clip"
