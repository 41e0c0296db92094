"""Pure-torch CLIP modules in OpenAI's state-dict layout: the text transformer, ViT and modified-ResNet towers.

Nothing here knows about plugins, specs or checkpoint files: these are plain
``nn.Module`` classes that can be built under ``torch.device("meta")`` and
filled with ``load_state_dict(state_dict, strict=True, assign=True)``.
``cast_model`` puts a model in the reference's mixed precision; ``skip_init_on_meta``
skips the (pointless) initialisation of meta tensors while building one.
"""

from clipkit.nn.clip import CLIP
from clipkit.nn.layers import (
    Embedding,
    LayerNorm,
    LayerScale,
    MultiheadSelfAttention,
    QuickGELU,
    ResidualAttentionBlock,
    Transformer,
    cast_model,
)
from clipkit.nn.meta import skip_init_on_meta
from clipkit.nn.resize import resize_grid_embedding, resize_text_embedding
from clipkit.nn.resnet import AttentionPool2d, BatchNorm2d, Bottleneck, ModifiedResNet
from clipkit.nn.towers import TOWERS, ImageTower, TextTower, split_tower
from clipkit.nn.vit import AttentionalPooler, VisionTransformer

__all__ = [
    "CLIP",
    "AttentionPool2d",
    "AttentionalPooler",
    "BatchNorm2d",
    "Bottleneck",
    "Embedding",
    "LayerNorm",
    "LayerScale",
    "ModifiedResNet",
    "MultiheadSelfAttention",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "cast_model",
    "ImageTower",
    "TextTower",
    "TOWERS",
    "resize_grid_embedding",
    "resize_text_embedding",
    "split_tower",
    "skip_init_on_meta",
]
