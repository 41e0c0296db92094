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
