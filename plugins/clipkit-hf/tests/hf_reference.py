"""Small random ``transformers.CLIPModel``s and their outputs: the numerical reference for clipkit-hf's tests."""

from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel

VOCAB = 100
CONTEXT = 16
RESOLUTION = 32


def make_clip(
    *,
    text_act: str = "quick_gelu",
    vision_act: str = "quick_gelu",
    text_width: int = 64,
    vision_width: int = 64,
    text_heads: int = 2,
    vision_heads: int = 4,
    eps: float = 1e-5,
    intermediate: int | None = None,
    eos_token_id: int = VOCAB - 1,
    seed: int = 0,
) -> CLIPModel:
    """A two-layer CLIPModel (32 px images, 8 px patches, 100 tokens of 16) with every parameter randomly perturbed.

    Random init leaves LayerNorms at one/zero and biases at zero; each
    parameter gets seeded noise on top so that a mix-up of any two tensors
    shows in the outputs. ``logit_scale`` is set away from its default.
    """
    config = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=text_width, intermediate_size=intermediate or 4 * text_width,
            num_hidden_layers=2, num_attention_heads=text_heads, max_position_embeddings=CONTEXT,
            hidden_act=text_act, layer_norm_eps=eps, eos_token_id=eos_token_id, bos_token_id=VOCAB - 2, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=vision_width, intermediate_size=4 * vision_width, num_hidden_layers=2,
            num_attention_heads=vision_heads, image_size=RESOLUTION, patch_size=8, hidden_act=vision_act,
            layer_norm_eps=eps,
        ),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.1 if "norm" in name or name.endswith("bias") else 0.02
            param.add_(torch.randn(param.shape, generator=gen) * scale)
        model.logit_scale.fill_(2.3)
    return model


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random ``[batch, 3, 32, 32]`` pixel values."""
    return torch.randn((batch, 3, RESOLUTION, RESOLUTION), generator=torch.Generator().manual_seed(seed))


def tokens() -> torch.Tensor:
    """Three texts of different lengths: start (98), ids, end-of-text (99, the highest id), zero padding."""
    rows = torch.zeros((3, CONTEXT), dtype=torch.long)
    gen = torch.Generator().manual_seed(7)
    for row, end in enumerate((4, 9, CONTEXT - 1)):
        rows[row, 0] = VOCAB - 2
        rows[row, 1:end] = torch.randint(1, VOCAB - 2, (end - 1,), generator=gen)
        rows[row, end] = VOCAB - 1
    return rows


def _pooled(output: object) -> torch.Tensor:
    # transformers 5 returns BaseModelOutputWithPooling from get_*_features; 4.x returned the tensor
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def reference_outputs(model: CLIPModel, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """transformers' image and text features and both logits for the inputs."""
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values)
        return {
            "image": _pooled(model.get_image_features(pixel_values=pixel_values)),
            "text": _pooled(model.get_text_features(input_ids=input_ids)),
            "logits_per_image": out.logits_per_image,
            "logits_per_text": out.logits_per_text,
        }
