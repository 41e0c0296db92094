"""The default image preprocessing for any spec: CLIP's resize, crop and normalisation at the spec's resolution."""

from __future__ import annotations

import functools
from collections.abc import Callable
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
    sizes does the same). With ``longest=True`` it is the largest size that
    fits inside instead (open_clip's ``resize_mode="longest"``), padded after.
    """

    def __init__(self, size: tuple[int, int], *, longest: bool = False, interpolation: str = "bicubic") -> None:
        self.size = size
        self.longest = longest
        self.interpolation = interpolation

    def __call__(self, image: Any) -> Any:
        from torchvision.transforms import functional as F

        width, height = image.size
        ratios = (height / self.size[0], width / self.size[1])
        ratio = max(ratios) if self.longest else min(ratios)
        return F.resize(image, [round(height / ratio), round(width / ratio)], _mode(self.interpolation))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, longest={self.longest})"


class CenterCropOrPad:
    """Center-crop a PIL image to ``(height, width)``, padding it first with ``fill`` where it is smaller."""

    def __init__(self, size: tuple[int, int], fill: int = 0) -> None:
        self.size = size
        self.fill = fill

    def __call__(self, image: Any) -> Any:
        from torchvision.transforms import functional as F

        height, width = self.size
        short_w, short_h = max(width - image.size[0], 0), max(height - image.size[1], 0)
        if short_w or short_h:
            image = F.pad(image, [short_w // 2, short_h // 2, (short_w + 1) // 2, (short_h + 1) // 2], fill=self.fill)
        return F.center_crop(image, [height, width])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, fill={self.fill})"


def _mode(interpolation: str) -> Any:
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}[interpolation]


def _pair(resolution: int | tuple[int, int]) -> tuple[int, int]:
    return (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))


class CLIPPreprocess:
    """CLIP's preprocessing as a torchvision ``Compose``, built on first use.

    Calling it, or reading ``transforms`` (or any other attribute of a
    ``Compose``), builds ``compose``: the torchvision pipeline. It is built
    late because ``import torchvision`` imports ``torch._dynamo`` (seconds of a
    fresh process's start) and ``clipkit.load`` should not make a program that
    never preprocesses an image pay for it.
    """

    def __init__(
        self, resolution: int | tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...], *,
        interpolation: str = "bicubic", resize_mode: str = "shortest", fill_color: int = 0,
        resize_to: int | None = None,
    ) -> None:
        self.resolution = resolution
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.fitting = (interpolation, resize_mode, fill_color, resize_to)

    @functools.cached_property
    def compose(self) -> Compose:
        """The torchvision ``Compose``: fit the image (``image_transform``'s modes), RGB, tensor, normalise."""
        from torchvision.transforms import Compose, Normalize, ToTensor

        fit = _fit(self.resolution, *self.fitting)
        return Compose([*fit, _to_rgb, ToTensor(), Normalize(self.mean, self.std)])

    @property
    def transforms(self) -> list[Any]:
        """The steps of the pipeline, as ``Compose.transforms``."""
        return self.compose.transforms

    def __call__(self, image: Any) -> torch.Tensor:
        """Preprocess one PIL image into a ``[3, height, width]`` float32 tensor."""
        return self.compose(image)

    def split(self) -> tuple[Callable[[Any], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None:
        """``(to_pixels, normalize)``, whose composition equals ``self(image)`` bit for bit, or ``None``.

        A batch engine runs ``to_pixels`` per image in its workers (uint8: a
        quarter of the bytes to ship) and ``normalize`` per batch where the
        model is. ``None`` when the halves would not be this transform: a
        subclass that changes ``__call__``, or a pipeline whose last steps
        were changed after it was built.
        """
        if type(self).__call__ is not CLIPPreprocess.__call__:
            return None
        if "compose" in self.__dict__:  # built, so perhaps edited: the halves assume ToTensor, Normalize last
            from torchvision.transforms import Normalize, ToTensor

            steps = self.compose.transforms
            if (len(steps) < 2 or type(steps[-2]) is not ToTensor or type(steps[-1]) is not Normalize
                    or tuple(steps[-1].mean) != self.mean or tuple(steps[-1].std) != self.std):
                return None
        return self.to_pixels, self.normalize

    def to_pixels(self, image: Any) -> torch.Tensor:
        """The first part of ``__call__``: fit the PIL image and make it RGB, as a ``[3, height, width]`` uint8 tensor.

        ``normalize(to_pixels(image))`` equals ``self(image)`` bit for bit (see ``split``).
        """
        import numpy as np
        import torch

        for step in self.compose.transforms[:-2]:  # everything before ToTensor and Normalize
            image = step(image)
        return torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """The rest of ``__call__`` for uint8 pixels ``[..., 3, height, width]`` from ``to_pixels``, on their device.

        On the CPU: the same operations as torchvision's ``ToTensor`` and
        ``Normalize`` (scale to [0, 1] in the default float dtype, subtract
        the mean, divide by the std), so each value is the same float. On
        another device a kernel may round differently (CUDA divides by a
        scalar through its reciprocal), so there the 256 values each channel
        can take are computed that way on the CPU once and looked up.
        """
        import torch

        if pixels.device.type == "cpu":
            return self._normalize_on_cpu(pixels)
        return self._normalize_by_lookup(pixels)

    def _normalize_by_lookup(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        table = self._normalize_on_cpu(torch.arange(256, dtype=torch.uint8).expand(3, 1, 256)).view(3, 256)
        table = table.to(pixels.device)
        flat = pixels.reshape(*pixels.shape[:-2], -1).long()  # [..., 3, height * width]
        values = torch.gather(table.expand(*flat.shape[:-1], 256), -1, flat)
        return values.view(pixels.shape)

    def _normalize_on_cpu(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        dtype = torch.get_default_dtype()
        scaled = pixels.to(dtype=dtype).div(255)
        mean = torch.as_tensor(self.mean, dtype=dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=dtype).view(-1, 1, 1)
        return scaled.sub_(mean).div_(std)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("compose", "resolution", "mean", "std", "fitting"):
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


def image_transform(
    resolution: int | tuple[int, int],
    *,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    fill_color: int = 0,
    resize_to: int | None = None,
) -> CLIPPreprocess:
    """The preprocessing a spec's fields describe: fit the image to ``resolution``, RGB, tensor, normalise.

    ``resize_mode``: ``"shortest"`` resizes the short side (to ``resize_to``
    when given, else the resolution) then center-crops; ``"longest"`` resizes
    the long side, then pads with ``fill_color`` and center-crops; ``"squash"``
    resizes to the resolution ignoring the aspect ratio. The steps and their
    order are open_clip's ``image_transform`` (eval) and, for the defaults, the
    reference ``clip.load``'s transform, so a PIL image gives the same tensor.
    """
    return CLIPPreprocess(resolution, mean, std, interpolation=interpolation, resize_mode=resize_mode,
                          fill_color=fill_color, resize_to=resize_to)


def _fit(resolution: int | tuple[int, int], interpolation: str, resize_mode: str, fill_color: int,
         resize_to: int | None) -> list[Any]:
    """The steps that fit an image to ``resolution`` (see ``image_transform``)."""
    from torchvision.transforms import CenterCrop, Resize

    size = _pair(resolution)
    if resize_mode == "squash":
        return [Resize(size, interpolation=_mode(interpolation))]
    if resize_mode == "longest":
        return [CoverResize(size, longest=True, interpolation=interpolation), CenterCropOrPad(size, fill_color)]
    if size[0] == size[1]:
        return [Resize(resize_to or size[0], interpolation=_mode(interpolation)), CenterCrop(size)]
    return [CoverResize(size, interpolation=interpolation), CenterCrop(size)]


@hookimpl(trylast=True)
def make_transform(spec: ArchSpec) -> CLIPPreprocess:
    """Serve every spec that no other plugin gave a transform for, with the preprocessing its fields describe."""
    return image_transform(
        spec.image_resolution, mean=spec.image_mean, std=spec.image_std, interpolation=spec.interpolation,
        resize_mode=spec.resize_mode, fill_color=spec.fill_color, resize_to=spec.resize_to,
    )
