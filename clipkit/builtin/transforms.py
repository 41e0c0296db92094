"""The default image preprocessing for any spec: CLIP's resize, crop and normalisation at the spec's resolution."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipkit.hookspecs import hookimpl
from clipkit.spec import CLIP_MEAN, CLIP_STD, ArchSpec

if TYPE_CHECKING:
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


def clip_transform(
    resolution: int | tuple[int, int], mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> Compose:
    """Return CLIP's preprocessing at ``resolution``: bicubic resize of the short side, center crop, RGB, tensor, normalise.

    The same steps and constants as the reference ``clip.load``'s transform, so
    a PIL image gives the same tensor. A ``(height, width)`` resolution resizes
    the image (aspect ratio kept) to cover that size, then center-crops it.
    """
    # imported here: torchvision.transforms costs seconds of import time that
    # ``clipkit inspect`` / ``fetch`` / ``plugins`` never need
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    if isinstance(resolution, tuple):
        resize: Any = CoverResize(resolution)
    else:
        resize = Resize(resolution, interpolation=InterpolationMode.BICUBIC)
    return Compose(
        [
            resize,
            CenterCrop(resolution),
            _to_rgb,
            ToTensor(),
            Normalize(mean, std),
        ]
    )


@hookimpl(trylast=True)
def make_transform(spec: ArchSpec) -> Compose:
    """Serve every spec that no other plugin gave a transform for."""
    return clip_transform(spec.image_resolution)
