"""Load-time adaptation: another input size (ViT, ResNet, non-square), another text length, one tower only.

Oracles: open_clip's ``resize_pos_embed`` and open_clip's own model built from
the resized weights (it reads the input size off the embedding), a direct
computation for the text length, and the full clipkit model for the towers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import clipkit_template
import pytest
import torch
from factories import TINY_RESNET, TINY_VIT, reference_model, sample_tokens, write_checkpoint
from PIL import Image

import clipkit
from clipkit.errors import ConfigurationError, ResizeError, TowerError


#: the random test files have no config beside them: guessed fields are expected here
pytestmark = pytest.mark.filterwarnings("ignore::clipkit.errors.AssumptionWarning")


def _open_clip_resized(state_dict: dict[str, torch.Tensor], key: str, grid: tuple[int, int]) -> torch.Tensor:
    """open_clip's ``resize_pos_embed`` applied to ``state_dict[key]`` for a ``grid``-sized tower."""
    from open_clip.model import resize_pos_embed

    moved = {"visual.positional_embedding": state_dict[key].clone()}
    resize_pos_embed(moved, types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=grid)))
    return moved["visual.positional_embedding"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    folder = tmp_path_factory.mktemp("adapt")
    out = {}
    for config in (TINY_VIT, TINY_RESNET):
        path = folder / f"{config.name}.pt"
        out[config.family] = (path, write_checkpoint(path, config, dtype=torch.float32, seed=3))
    return out


def _images(resolution: tuple[int, int], batch: int = 2) -> torch.Tensor:
    return torch.randn((batch, 3, *resolution), generator=torch.Generator().manual_seed(5))


# -- another input size -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "key", "size", "grid"),
    [
        ("vit", "visual.positional_embedding", 48, (6, 6)),
        ("vit", "visual.positional_embedding", (48, 64), (6, 8)),
        ("resnet", "visual.attnpool.positional_embedding", 96, (3, 3)),
        ("resnet", "visual.attnpool.positional_embedding", (96, 64), (3, 2)),
    ],
)
def test_resized_embedding_is_open_clips_resize_pos_embed(files, family, key, size, grid):
    path, state_dict = files[family]
    model, preprocess = clipkit.load(path, device="cpu", image_resolution=size)
    resized = dict(model.state_dict())[key]
    torch.testing.assert_close(resized, _open_clip_resized(state_dict, key, grid), rtol=0, atol=0)
    assert model.visual.input_resolution == size
    assert model.clipkit_spec.provenance_of("image_resolution").source == "caller"
    height, width = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        features = model.encode_image(_images((height, width)))
    assert features.shape == (2, 32) and torch.isfinite(features).all()
    picture = Image.new("RGB", (150, 100), (200, 30, 60))
    assert preprocess(picture).shape == (3, height, width)


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_resized_model_matches_open_clip_built_from_the_resized_weights(files, family):
    path, state_dict = files[family]
    size, key = (48, "visual.positional_embedding") if family == "vit" else (96, "visual.attnpool.positional_embedding")
    grid = (size // 8, size // 8) if family == "vit" else (size // 32, size // 32)
    reference = reference_model({**state_dict, key: _open_clip_resized(state_dict, key, grid)})
    model, _ = clipkit.load(path, device="cpu", image_resolution=size)
    images = _images((size, size))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images), rtol=1e-4, atol=1e-5)


def test_a_size_off_the_grid_is_a_resize_error(files):
    with pytest.raises(ResizeError, match="multiple of the patch size 8"):
        clipkit.load(files["vit"][0], device="cpu", image_resolution=50)
    with pytest.raises(ResizeError, match="multiple of 32"):
        clipkit.load(files["resnet"][0], device="cpu", image_resolution=(96, 80))


def test_a_family_without_the_hook_cannot_resize_nor_split(tmp_path):
    spec = clipkit_template.MeanPoolSpec(image_resolution=32, patch_size=8, embed_dim=16, vocab_size=50, context_length=12)
    path = tmp_path / "mean-pool.pt"
    torch.save(clipkit_template.MeanPoolCLIP(spec).state_dict(), path)
    assert clipkit.load(path, device="cpu")[0].visual.input_resolution == 32  # the plugin is installed
    with pytest.raises(ResizeError, match="'mean-pool'.*cannot be resized"):
        clipkit.load(path, device="cpu", image_resolution=64)
    with pytest.raises(TowerError, match="'mean-pool'.*one tower at a time"):
        clipkit.load(path, device="cpu", tower="image")


def test_conflicting_requests_are_configuration_errors(files):
    path = files["vit"][0]
    with pytest.raises(ConfigurationError, match="tower='text' leaves out"):
        clipkit.load(path, device="cpu", tower="text", image_resolution=48)
    with pytest.raises(ConfigurationError, match="tower must be one of"):
        clipkit.load(path, device="cpu", tower="both")
    with pytest.raises(ConfigurationError, match="image_resolution"):
        clipkit.load(path, device="cpu", image_resolution=(48, 48, 3))


@pytest.mark.parametrize(
    "size", [(32,), (), (32, 32, 3), True, (True, 32), 32.0, (32.0, 32), "32", ("32", "32"), ((32, 32),), [[32], 32],
             0, -32, (32, 0), {"height": 32}],
)
def test_a_malformed_image_resolution_is_refused_where_it_enters(tmp_path, size):
    # the source does not exist: the value is refused before anything is resolved or read
    with pytest.raises(ConfigurationError, match=r"image_resolution must be .*got " + re.escape(repr(size))):
        clipkit.load(tmp_path / "missing.pt", device="cpu", image_resolution=size)


def test_a_malformed_context_length_is_refused_where_it_enters(tmp_path):
    for length in (True, 12.0, "12", (12,), 0):
        with pytest.raises(ConfigurationError, match="context_length must be a positive int, got " + re.escape(repr(length))):
            clipkit.load(tmp_path / "missing.pt", device="cpu", context_length=length)


def test_a_one_sided_tuple_on_the_model_file_is_a_configuration_error(files):
    # the QA repro: (32,) once reached the resize hook and raised IndexError there
    with pytest.raises(ConfigurationError, match=re.escape("got (32,)")):
        clipkit.load(files["vit"][0], device="cpu", image_resolution=(32,))
    with pytest.raises(ConfigurationError, match="image_resolution"):
        clipkit.ArchSpec(family="vit", image_resolution=(32,))


# -- another text length ------------------------------------------------------------------------------


def _reference_with_text_embedding(state_dict: dict[str, torch.Tensor], embedding: torch.Tensor) -> torch.nn.Module:
    """open_clip's model of ``state_dict`` with ``embedding`` as its text positions (and a causal mask to match)."""
    reference = reference_model({**state_dict, "positional_embedding": embedding})
    reference.attn_mask = torch.full((len(embedding), len(embedding)), float("-inf")).triu_(1)
    return reference


@pytest.mark.parametrize("length", [9, 24])
def test_text_length_change_is_the_direct_computation(files, length):
    path, state_dict = files["vit"]
    trained = state_dict["positional_embedding"]
    if length < len(trained):
        expected_embedding = trained[:length]
    else:  # the documented rule: trained rows kept, new rows repeat the last trained one
        expected_embedding = torch.cat([trained, trained[-1:].repeat(length - len(trained), 1)])
    model, _ = clipkit.load(path, device="cpu", context_length=length)
    assert model.context_length == length and model.clipkit_spec.provenance_of("context_length").source == "caller"
    torch.testing.assert_close(model.positional_embedding.detach(), expected_embedding, rtol=0, atol=0)
    tokens = sample_tokens(TINY_VIT.with_(context_length=length), batch=3, seed=2)
    reference = _reference_with_text_embedding(state_dict, expected_embedding)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens), rtol=1e-4, atol=1e-5)


def test_a_longer_context_embeds_texts_that_fit_as_before(files):
    path, _ = files["vit"]
    original, _ = clipkit.load(path, device="cpu")
    longer, _ = clipkit.load(path, device="cpu", context_length=40)
    tokens = sample_tokens(TINY_VIT, batch=3, seed=4)
    padded = torch.nn.functional.pad(tokens, (0, 40 - tokens.shape[1]))
    with torch.no_grad():
        torch.testing.assert_close(longer.encode_text(padded), original.encode_text(tokens), rtol=1e-5, atol=1e-6)


# -- one tower ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_tower_only_loads_equal_the_full_model(files, family):
    path, _ = files[family]
    config = TINY_VIT if family == "vit" else TINY_RESNET
    full, _ = clipkit.load(path, device="cpu")
    image_tower, preprocess = clipkit.load(path, device="cpu", tower="image")
    text_tower, _ = clipkit.load(path, device="cpu", tower="text")
    assert not any(key.startswith("visual.") for key in text_tower.state_dict())
    assert all(key.startswith("visual.") or key == "logit_scale" for key in image_tower.state_dict())
    assert not hasattr(image_tower, "encode_text") and not hasattr(text_tower, "encode_image")
    images = _images((config.image_resolution, config.image_resolution))
    tokens = sample_tokens(config, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(image_tower.encode_image(images), full.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(text_tower.encode_text(tokens), full.encode_text(tokens), rtol=0, atol=0)
    assert image_tower.logit_scale.item() == text_tower.logit_scale.item() == full.logit_scale.item()
    assert text_tower.context_length == full.context_length and text_tower.vocab_size == full.vocab_size
    assert preprocess(Image.new("RGB", (80, 80))).shape == (3, config.image_resolution, config.image_resolution)


def test_a_tower_load_with_a_resized_input(files):
    path, _ = files["vit"]
    resized, _ = clipkit.load(path, device="cpu", image_resolution=64)
    tower, _ = clipkit.load(path, device="cpu", image_resolution=64, tower="image")
    images = _images((64, 64))
    with torch.no_grad():
        torch.testing.assert_close(tower.encode_image(images), resized.encode_image(images), rtol=0, atol=0)


_MEASURE = r"""
import json, sys, torch, clipkit
def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))
def peak_during(**kwargs):
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark to the current resident size
    before = status("VmRSS")
    model, _ = clipkit.load(sys.argv[1], device="cpu", **kwargs)
    return status("VmHWM") - before, model
clipkit.load(sys.argv[2], device="cpu")  # warm up: imports, plugin discovery, torchvision
image_peak, image_tower = peak_during(tower="image")
del image_tower
full_peak, full = peak_during()
print(json.dumps({"image": image_peak, "full": full_peak}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_an_image_tower_load_never_reads_the_text_tower(tmp_path, files):
    # a wide text tower in fp16 (the official releases' dtype) and a tiny image tower: loading in fp32
    # touches every byte of a tower it loads (the cast) and none of one it leaves out (memory-mapped)
    config = TINY_VIT.with_(text_width=512, text_layers=2, embed_dim=32)
    path = tmp_path / "wide-text.pt"
    state_dict = write_checkpoint(path, config, dtype=torch.float16)
    text_bytes = sum(v.numel() * 4 for k, v in state_dict.items() if not k.startswith("visual."))
    image_bytes = sum(v.numel() * 4 for k, v in state_dict.items() if k.startswith("visual."))
    assert text_bytes > 40 * image_bytes
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(files["vit"][0])],
        capture_output=True, text=True, timeout=240, check=True,
    )
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    assert peaks["full"] > text_bytes, peaks  # the measurement sees a tower being read
    assert peaks["image"] < text_bytes / 4, peaks  # ... and the image tower alone reads nothing of the text tower
