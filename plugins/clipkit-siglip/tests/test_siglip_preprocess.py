"""clipkit-siglip's preprocessing equals transformers' ``SiglipImageProcessor`` on real photos.

The processor config is saved the way transformers saves it; clipkit reads it
from the checkpoint directory and its transform must give the same tensor.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import SiglipImageProcessor

import clipkit
import siglip_reference as ref

pytestmark = pytest.mark.usefixtures("siglip_registered")
skimage_data = pytest.importorskip("skimage.data")
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "camera.png")


def photos() -> list[Image.Image]:
    """scikit-image's photos (RGB, and greyscale ``camera``), plus an RGBA one with a transparency gradient."""
    images = [Image.open(f"{skimage_data.data_dir}/{name}") for name in PHOTOS]
    rgba = images[0].convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    return [*images, rgba]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("siglip-preprocess")
    ref.make_siglip(layers=1, seed=12).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("resample", [3, 2, 1])  # bicubic, bilinear, lanczos
def test_preprocess_equals_siglip_image_processor_on_photos(model_dir, resample):
    processor = SiglipImageProcessor(size={"height": 32, "width": 32}, resample=resample)
    processor.save_pretrained(model_dir)
    spec = clipkit.inspect(model_dir)
    assert spec.interpolation == {3: "bicubic", 2: "bilinear", 1: "lanczos"}[resample]
    _, preprocess = clipkit.load(model_dir, device="cpu")
    for image in photos():
        want = processor(image, return_tensors="pt")["pixel_values"][0]
        got = preprocess(image)
        assert got.dtype == torch.float32 and tuple(got.shape) == (3, 32, 32)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=lambda m, i=image: f"{i.mode} {i.size}: {m}")


def test_mean_and_std_come_from_the_processor_config(model_dir):
    processor = SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.48, 0.45, 0.4],
                                     image_std=[0.26, 0.26, 0.27])
    processor.save_pretrained(model_dir)
    _, preprocess = clipkit.load(model_dir, device="cpu")
    image = photos()[1]
    torch.testing.assert_close(preprocess(image), processor(image, return_tensors="pt")["pixel_values"][0],
                               rtol=0, atol=1e-6)
