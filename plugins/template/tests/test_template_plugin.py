"""The template plugin passes clipkit's conformance kit, and loads through clipkit.load with its own numbers."""

from __future__ import annotations

import clipkit_template
import torch

from clipkit.testing import PluginConformance

SPEC = clipkit_template.MeanPoolSpec(image_resolution=32, patch_size=8, embed_dim=16, vocab_size=50, context_length=12)


class TestTemplatePlugin(PluginConformance):
    plugin = clipkit_template
    expected_spec = SPEC

    def sample_state_dict(self):
        torch.manual_seed(0)
        return clipkit_template.MeanPoolCLIP(SPEC).state_dict()


def test_features_are_what_the_weights_say():
    torch.manual_seed(1)
    model = clipkit_template.MeanPoolCLIP(SPEC).eval()
    tokens = torch.tensor([[3, 4, 5], [6, 7, 8]])
    expected = (model.token_embedding.weight[tokens] + model.positional_embedding[:3]).mean(dim=1)
    torch.testing.assert_close(model.encode_text(tokens), expected)
    image = torch.zeros(1, 3, 32, 32)  # every patch is zero: the conv gives its bias
    torch.testing.assert_close(
        model.encode_image(image)[0], model.visual.patch.bias + model.visual.positional_embedding.mean(dim=0)
    )
