"""The default preprocessing gives the reference's tensors on real photographs."""

from __future__ import annotations

import os

import oracles
import pytest
import skimage
import torch
from PIL import Image

from clipkit.builtin.transforms import clip_transform, make_transform
from clipkit.spec import ArchSpec

DATA = os.path.join(os.path.dirname(skimage.__file__), "data")
# colour photos, a greyscale photo, an RGBA logo, a palette-free JPEG: every mode a user meets
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
          "logo.png", "hubble_deep_field.jpg", "retina.jpg"]


def _open(name: str) -> Image.Image:
    return Image.open(os.path.join(DATA, name))


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("resolution", [224, 336])
def test_matches_openai_reference_transform(name, resolution):
    reference = oracles.openai_clip().clip._transform(resolution)
    image = _open(name)
    ours = clip_transform(resolution)(image)
    expected = reference(image)
    assert ours.shape == (3, resolution, resolution)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "logo.png"])
def test_matches_open_clip_eval_transform(name):
    open_clip = oracles.open_clip()
    reference = open_clip.image_transform(288, is_train=False)
    image = _open(name)
    torch.testing.assert_close(clip_transform(288)(image), reference(image), rtol=0, atol=1e-6)


def test_default_hook_uses_the_spec_resolution():
    transform = make_transform(ArchSpec(family="anything", image_resolution=64))
    out = transform(_open("coffee.png"))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32


def test_greyscale_and_rgba_become_three_channels():
    for name in ("camera.png", "logo.png"):
        assert _open(name).mode != "RGB"
        assert clip_transform(32)(_open(name)).shape[0] == 3


# -- split for batch engines: uint8 pixels per image, normalisation per batch --------------------------


@pytest.mark.parametrize("fitting", [
    dict(resolution=224),
    dict(resolution=(192, 256), resize_mode="longest", fill_color=128),
    dict(resolution=160, resize_mode="squash", interpolation="bilinear",
         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
], ids=["openai", "longest-non-square", "squash-bilinear"])
def test_pixels_then_normalize_equals_the_whole_transform_bit_for_bit(fitting):
    from clipkit.builtin.transforms import image_transform
    from clipkit.spec import CLIP_MEAN, CLIP_STD

    options = {"mean": CLIP_MEAN, "std": CLIP_STD, **fitting}
    resolution, mean, std = options.pop("resolution"), options.pop("mean"), options.pop("std")
    preprocess = image_transform(resolution, mean=mean, std=std, **options)
    images = [_open(name) for name in PHOTOS]
    # every byte value in every channel, at many positions: the scaling is checked exhaustively
    ramp = torch.arange(256 * 256, dtype=torch.int64).remainder(256).to(torch.uint8).view(256, 256)
    images.append(Image.fromarray(torch.stack([ramp, ramp.flip(0), ramp.t()], dim=-1).numpy()))
    pixels = [preprocess.to_pixels(image) for image in images]
    assert all(p.dtype == torch.uint8 and p.shape[0] == 3 for p in pixels)
    for image, one in zip(images, pixels):
        assert torch.equal(preprocess.normalize(one), preprocess(image))
    batch = torch.stack(pixels)  # a batch as the engine ships it, finished at once
    expected = torch.stack([preprocess(image) for image in images])
    assert torch.equal(preprocess.normalize(batch), expected)
    # off the CPU the values are looked up in a table computed on the CPU: the lookup itself changes nothing
    assert torch.equal(preprocess._normalize_by_lookup(batch), expected)
    assert torch.equal(preprocess._normalize_by_lookup(pixels[0]), expected[0])
    if torch.cuda.is_available():
        assert torch.equal(preprocess.normalize(batch.cuda()).cpu(), expected)


def test_split_refuses_when_the_halves_would_not_be_the_transform():
    from torchvision.transforms import Normalize

    preprocess = clip_transform(224)
    assert preprocess.split() == (preprocess.to_pixels, preprocess.normalize)
    preprocess.transforms[-1] = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # edited after it was built
    assert preprocess.split() is None

    class Flipped(type(preprocess)):
        def __call__(self, image):
            return super().__call__(image).flip(-1)

    assert Flipped(224, preprocess.mean, preprocess.std).split() is None
