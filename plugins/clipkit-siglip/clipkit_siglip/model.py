"""SigLIP in pure torch, with transformers' ``SiglipModel`` state-dict keys (so its files load as they are).

Two towers of pre-norm transformer blocks. The image tower embeds patches
with a convolution and learned positions (no class token) and pools with a
multi-head attention head (a learned probe attends over the patches). The text
tower takes the **last** position of the sequence (SigLIP pads every text to
the full context, so that is always the same slot) through a linear head. The
two logits are sigmoid logits: ``logit_scale.exp() * cos(image, text) + logit_bias``
— apply ``torch.sigmoid`` for independent per-pair probabilities, not a softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.errors import ConfigurationError
from clipkit.nn import LayerNorm
from clipkit.nn.layers import check_resolution

__all__ = ["ACTIVATIONS", "SiglipCLIP", "SiglipTextTower", "SiglipVisionTower"]

#: transformers ``hidden_act`` values this module runs, as torch functions
ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


def activation(name: str):
    """The torch function for a transformers ``hidden_act`` name; ``ConfigurationError`` for one not supported."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigurationError(
            f"hidden_act {name!r} is not supported by clipkit-siglip; supported: {', '.join(ACTIVATIONS)}"
        ) from None


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with separate q/k/v projections (transformers' ``SiglipAttention``)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    """``fc2(act(fc1(x)))``."""

    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.act_name = act
        self.act = activation(act)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, width: int, heads: int, mlp_width: int, act: str, eps: float) -> None:
        super().__init__()
        self.layer_norm1 = LayerNorm(width, eps=eps)
        self.self_attn = Attention(width, heads)
        self.layer_norm2 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """``layers`` transformer blocks."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, act: str, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(width, heads, mlp_width, act, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TextEmbeddings(nn.Module):
    """Token plus learned position embeddings."""

    def __init__(self, vocab_size: int, context_length: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context_length, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens) + self.position_embedding.weight[: tokens.shape[1]]


class SiglipTextTower(nn.Module):
    """The text tower: embeddings, encoder, final LayerNorm, the last position through a linear head."""

    def __init__(self, *, vocab_size: int, context_length: int, width: int, layers: int, heads: int,
                 mlp_width: int, embed_dim: int, act: str, eps: float) -> None:
        super().__init__()
        self.context_length = context_length
        self.embeddings = TextEmbeddings(vocab_size, context_length, width)
        self.encoder = Encoder(width, layers, heads, mlp_width, act, eps)
        self.final_layer_norm = LayerNorm(width, eps=eps)
        self.head = nn.Linear(width, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.context_length:
            raise ConfigurationError(
                f"the texts are {tokens.shape[1]} tokens wide, more than this model's context of "
                f"{self.context_length}; tokenize with clipkit.get_tokenizer(model)"
            )
        x = self.final_layer_norm(self.encoder(self.embeddings(tokens)))
        return self.head(x[:, -1])


class VisionEmbeddings(nn.Module):
    """Patch convolution plus one learned position per patch (no class token)."""

    def __init__(self, width: int, patch_size: int, grid: int) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.position_embedding = nn.Embedding(grid * grid, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(images.to(self.patch_embedding.weight.dtype))
        return patches.flatten(2).transpose(1, 2) + self.position_embedding.weight


class AttentionPoolingHead(nn.Module):
    """Multi-head attention pooling: a learned probe attends over the patches, then a residual MLP."""

    def __init__(self, width: int, heads: int, mlp_width: int, act: str, eps: float) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layernorm = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1).to(x.dtype)
        pooled = self.attention(probe, x, x, need_weights=False)[0]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


class SiglipVisionTower(nn.Module):
    """The image tower: patch embeddings, encoder, post LayerNorm, attention-pooling head."""

    def __init__(self, *, resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_width: int, act: str, eps: float) -> None:
        super().__init__()
        self.input_resolution = resolution
        self.embeddings = VisionEmbeddings(width, patch_size, resolution // patch_size)
        self.encoder = Encoder(width, layers, heads, mlp_width, act, eps)
        self.post_layernorm = LayerNorm(width, eps=eps)
        self.head = AttentionPoolingHead(width, heads, mlp_width, act, eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_resolution(images, self.input_resolution)
        return self.head(self.post_layernorm(self.encoder(self.embeddings(images))))


class SiglipCLIP(nn.Module):
    """A SigLIP dual encoder: ``encode_image``, ``encode_text`` and sigmoid-style ``forward`` logits.

    ``visual`` is the image tower (``visual.input_resolution``);
    ``context_length`` and ``vocab_size`` describe the text tower;
    ``logit_bias`` marks the logits as sigmoid logits (see the module docstring).
    """

    fp32_parameters = ("logit_scale", "logit_bias")
    #: how to turn this model's logits into probabilities (clipkit's examples and ``classify`` read it)
    score = "sigmoid"

    def __init__(self, text: SiglipTextTower, vision: SiglipVisionTower) -> None:
        super().__init__()
        self.text_model = text
        self.vision_model = vision
        self.logit_scale = nn.Parameter(torch.empty(1))
        self.logit_bias = nn.Parameter(torch.empty(1))
        self.context_length = text.context_length
        self.vocab_size = text.embeddings.token_embedding.num_embeddings
        self.register_load_state_dict_pre_hook(_drop_position_ids)

    @property
    def visual(self) -> SiglipVisionTower:
        """The image tower (the reference model's name for it)."""
        return self.vision_model

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the patch convolution's weights (what images are cast to)."""
        return self.vision_model.embeddings.patch_embedding.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``[batch, embed_dim]`` (not normalised), as transformers' ``get_image_features``."""
        return self.vision_model(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features ``[batch, embed_dim]`` (not normalised) of ids padded to the context, as ``get_text_features``."""
        return self.text_model(tokens)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)``: ``logit_scale.exp() * cos + logit_bias``, sigmoid logits."""
        image = self.encode_image(images)
        text = self.encode_text(tokens)
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        per_text = (text @ image.t()) * self.logit_scale.exp().to(text.dtype) + self.logit_bias.to(text.dtype)
        return per_text.t(), per_text


def _drop_position_ids(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """``load_state_dict`` pre-hook: drop the ``position_ids`` buffers older transformers saved (computed here)."""
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith("embeddings.position_ids")]:
        del state_dict[key]
