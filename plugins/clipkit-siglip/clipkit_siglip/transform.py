"""SigLIP's image preprocessing: a squash resize to the model's square input, then mean/std normalisation.

The same steps and arithmetic as transformers' ``SiglipImageProcessor``
(its torchvision backend): transparency composited onto white, RGB, a uint8
tensor resized to ``R x R`` (no crop, the aspect ratio is not kept) with the
checkpoint's resample filter and antialiasing, then ``(x - 255 mean) / (255 std)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["SiglipTransform"]


def _rgb(image: Any) -> Any:
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


class SiglipTransform:
    """A callable from a PIL image to a ``[3, R, R]`` float32 tensor, SigLIP style (see the module docstring)."""

    def __init__(self, resolution: int, mean: tuple[float, ...], std: tuple[float, ...], interpolation: str) -> None:
        from torchvision.transforms import InterpolationMode

        self.resolution = resolution
        self.interpolation = InterpolationMode(interpolation)
        self.mean = torch.tensor(mean) * 255.0
        self.std = torch.tensor(std) * 255.0

    def __call__(self, image: Any) -> torch.Tensor:
        """The preprocessed image: ``[3, R, R]`` float32."""
        from torchvision.transforms.v2 import functional as tvF

        pixels = torch.from_numpy(np.array(_rgb(image))).permute(2, 0, 1).contiguous()
        resized = tvF.resize(pixels, [self.resolution, self.resolution], interpolation=self.interpolation,
                             antialias=True)
        return tvF.normalize(resized.to(torch.float32), self.mean.tolist(), self.std.tolist())

    def __repr__(self) -> str:
        return (f"SiglipTransform(resolution={self.resolution}, interpolation={self.interpolation.value!r}, "
                f"mean={[round(m / 255, 6) for m in self.mean.tolist()]}, std={[round(s / 255, 6) for s in self.std.tolist()]})")
