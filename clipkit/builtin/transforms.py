"""The default image preprocessing for any spec: CLIP's resize, crop and normalisation at the spec's resolution."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from clipkit.hookspecs import hookimpl
from clipkit.spec import CLIP_MEAN, CLIP_STD, ArchSpec

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import Compose



def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")


class CoverResize:
    """Resize a PIL image, keeping its aspect ratio, to the smallest size that covers ``(height, width)``.

    The non-square counterpart of resizing the short side: a center crop to
    ``(height, width)`` follows (open_clip's ``ResizeKeepRatio`` for non-square
    sizes does the same).
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, image: Any) -> Any:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        width, height = image.size
        ratio = min(height / self.size[0], width / self.size[1])
        return F.resize(image, [round(height / ratio), round(width / ratio)], InterpolationMode.BICUBIC)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class CLIPPreprocess:
    """CLIP's preprocessing as a torchvision ``Compose``, built on first use.

    Calling it, or reading ``transforms`` (or any other attribute of a
    ``Compose``), builds ``compose``: the torchvision pipeline. It is built
    late because ``import torchvision`` imports ``torch._dynamo`` (seconds of a
    fresh process's start) and ``clipkit.load`` should not make a program that
    never preprocesses an image pay for it.
    """

    def __init__(
        self, resolution: int | tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.resolution = resolution
        self.mean = tuple(mean)
        self.std = tuple(std)

    @functools.cached_property
    def compose(self) -> Compose:
        """The torchvision ``Compose``: bicubic resize (covering a ``(height, width)``), center crop, RGB, tensor, normalise."""
        from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

        if isinstance(self.resolution, tuple):
            resize: Any = CoverResize(self.resolution)
        else:
            resize = Resize(self.resolution, interpolation=InterpolationMode.BICUBIC)
        return Compose([resize, CenterCrop(self.resolution), _to_rgb, ToTensor(), Normalize(self.mean, self.std)])

    @property
    def transforms(self) -> list[Any]:
        """The steps of the pipeline, as ``Compose.transforms``."""
        return self.compose.transforms

    def __call__(self, image: Any) -> torch.Tensor:
        """Preprocess one PIL image into a ``[3, height, width]`` float32 tensor."""
        return self.compose(image)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("compose", "resolution", "mean", "std"):
            raise AttributeError(name)  # not yet set (unpickling) or private: never build for these
        return getattr(self.compose, name)

    def __repr__(self) -> str:
        return repr(self.compose)


def clip_transform(
    resolution: int | tuple[int, int], mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> CLIPPreprocess:
    """Return CLIP's preprocessing at ``resolution``: bicubic resize of the short side, center crop, RGB, tensor, normalise.

    The same steps and constants as the reference ``clip.load``'s transform, so
    a PIL image gives the same tensor. A ``(height, width)`` resolution resizes
    the image (aspect ratio kept) to cover that size, then center-crops it. The
    torchvision ``Compose`` behind it (``.compose``) is built, and torchvision
    imported, on first use.
    """
    return CLIPPreprocess(resolution, mean, std)


@hookimpl(trylast=True)
def make_transform(spec: ArchSpec) -> CLIPPreprocess:
    """Serve every spec that no other plugin gave a transform for."""
    return clip_transform(spec.image_resolution)
