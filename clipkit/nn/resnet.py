"""OpenAI's modified ResNet image tower (RN50, RN101, RN50x4, RN50x16, RN50x64 and other sizes).

It differs from torchvision's ResNet in three ways: a three-convolution stem
with an average pool instead of a max pool; anti-aliased strided blocks (an
average pool before the 3x3 convolution's output and in the shortcut instead
of strided convolutions); and attention pooling (``AttentionPool2d``) in place
of global average pooling. The output stride is 32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.errors import ConfigurationError
from clipkit.nn.layers import check_resolution, pair

__all__ = ["AttentionPool2d", "BatchNorm2d", "Bottleneck", "ModifiedResNet"]


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that asks to stay float32 (``keep_fp32``) when the model is cast to half precision.

    The reference never halves its BatchNorm layers; half-precision activations
    go through them with float32 statistics.
    """

    keep_fp32 = True


class Bottleneck(nn.Module):
    """A 1x1 -> 3x3 -> 1x1 bottleneck (expansion 4) whose stride is an average pool after the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            # keys "downsample.0" (conv) and "downsample.1" (bn); the pool has no parameters
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Pool a feature map to one vector by attending from the mean token to every position.

    Keys: ``positional_embedding`` ``[spacial_dim**2 + 1, embed_dim]`` (``[rows * cols + 1, embed_dim]``
    for a ``(rows, cols)`` feature map), ``q_proj``,
    ``k_proj``, ``v_proj`` and ``c_proj`` (``embed_dim -> output_dim``).
    """

    #: kept float32 by ``clipkit.nn.cast_model`` (the reference never halves it)
    fp32_parameters: tuple[str, ...] = ("positional_embedding",)

    def __init__(
        self, spacial_dim: int | tuple[int, int], embed_dim: int, num_heads: int, output_dim: int | None = None
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigurationError(f"attention pool width {embed_dim} is not divisible by {num_heads} heads")
        self.spacial_dim = spacial_dim
        self.num_heads = num_heads
        rows, cols = pair(spacial_dim)
        self.positional_embedding = nn.Parameter(torch.empty(rows * cols + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        nn.init.normal_(self.positional_embedding, std=embed_dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # [batch, h*w, channels]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        tokens = x.shape[1]
        head_dim = channels // self.num_heads
        q = self.q_proj(x[:, :1]).view(batch, 1, self.num_heads, head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [batch, heads, 1, head_dim]
        return self.c_proj(out.reshape(batch, channels))


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet image tower: 3-conv stem, four stages of ``layers`` bottlenecks, attention pooling.

    ``width`` is the first stage's bottleneck width (the stem ends with
    ``width`` channels and the last stage with ``width * 32``); ``heads`` is the
    attention pool's head count; ``output_dim`` the joint embedding width.
    """

    def __init__(
        self,
        layers: Sequence[int],
        output_dim: int,
        heads: int,
        input_resolution: int | tuple[int, int] = 224,
        width: int = 64,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ConfigurationError(f"ModifiedResNet needs four stage depths, got {tuple(layers)!r}")
        self.layers = tuple(layers)
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.width = width

        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        inplanes = width
        stages = []
        for index, blocks in enumerate(layers):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        rows, cols = pair(input_resolution)
        spacial = rows // 32 if rows == cols else (rows // 32, cols // 32)
        self.attnpool = AttentionPool2d(spacial, width * 32, heads, output_dim)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype images are cast to: the first convolution's weight dtype."""
        return self.conv1.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_resolution(x, self.input_resolution)
        x = x.to(self.dtype)
        if x.device.type == "cpu":  # oneDNN convolves NHWC input ~1.3x faster; the same numbers to float rounding
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
