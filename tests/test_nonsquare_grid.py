"""A ViT whose position table is not a square grid (open_clip's non-square ``image_size``): settled, or loudly not.

The shapes show only the table's patch count; its ``(height, width)`` comes
from ``open_clip_config.json`` (``model_cfg.vision_cfg.image_size``) or the
caller's ``image_resolution=(h, w)``, checked against that count. Without
either the load is a ``ConfigurationError`` saying what settles it, never a
message blaming the file. open_clip 3.3 is the oracle (model and transform).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import clipkit
from clipkit.errors import ConfigurationError
from clipkit.spec import CALLER, CONFIG, UNSETTLED
from tests import open_clip_layout as ocl

pytest.importorskip("open_clip")

#: patch 16 on 32x48 pixels: a 2x3 grid, 7 position rows (not a square number)
CFG: dict[str, Any] = {
    "embed_dim": 32, "quick_gelu": False,
    "vision_cfg": {"image_size": [32, 48], "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": ocl.VOCAB, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """open_clip's model, its hub-layout directory, and its bare state dict file (no config)."""
    root = tmp_path_factory.mktemp("nonsquare")
    model = ocl.build(CFG)
    hub = ocl.save_hub_layout(model, CFG, root / "hub")
    bare = root / "bare" / "weights.pt"
    bare.parent.mkdir()
    torch.save(model.state_dict(), bare)
    return model, hub, bare


def _load(source: Path, **kwargs: Any) -> tuple[torch.nn.Module, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clipkit.load(str(source), device="cpu", **kwargs)


def _matches_open_clip(ours: torch.nn.Module, model: torch.nn.Module) -> None:
    images, tokens = ocl.inputs(CFG)
    assert images.shape[-2:] == (32, 48)
    expected = ocl.reference_outputs(model, images, tokens)
    found = ocl.clipkit_outputs(ours, images, tokens)
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=1e-5, atol=1e-5, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("kwargs", [{}, {"image_resolution": (32, 48)}])
def test_the_config_settles_a_non_square_grid(kwargs: dict[str, Any], reference: Any) -> None:
    model, hub, _ = reference
    ours, _ = _load(hub, **kwargs)
    _matches_open_clip(ours, model)
    assert ours.clipkit_spec.image_resolution == (32, 48)
    assert ours.clipkit_spec.provenance_of("image_resolution").source in (CONFIG, CALLER)


def test_the_transform_gives_open_clips_non_square_inputs(reference: Any) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from open_clip.transform import image_transform
    from PIL import Image

    _, ours = _load(reference[1])
    expected = image_transform((32, 48), is_train=False)
    for photo in ("chelsea", "rocket", "camera"):
        image = Image.fromarray(getattr(skimage_data, photo)())
        found = ours(image)
        assert found.shape == (3, 32, 48)
        torch.testing.assert_close(found, expected(image), rtol=0, atol=0, msg=photo)


def test_without_config_or_keyword_the_error_says_what_settles_the_grid(reference: Any) -> None:
    bare = reference[2]
    spec = clipkit.inspect(str(bare))  # inspecting is fine: the grid is recorded as unsettled
    assert spec.provenance_of("image_resolution").source == UNSETTLED
    with pytest.raises(ConfigurationError, match=r"not a square grid") as caught:
        _load(bare)
    message = str(caught.value)
    assert "image_resolution=(h, w)" in message and "model_cfg.vision_cfg.image_size" in message
    assert "damaged" not in message


def test_the_callers_image_resolution_settles_the_grid_of_a_bare_file(reference: Any) -> None:
    model, hub, bare = reference
    settled = clipkit.inspect(str(hub)).to_dict()
    keywords = {name: settled[name] for name in ("quick_gelu", "vision_heads", "text_heads")}
    ours, _ = _load(bare, image_resolution=(32, 48), **keywords)
    assert ours.clipkit_spec.provenance_of("image_resolution").source == CALLER
    _matches_open_clip(ours, model)


def test_a_callers_grid_of_another_patch_count_is_an_error(reference: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"image_resolution=48 gives a 3x3 grid.*6 patches"):
        _load(reference[2], image_resolution=(48, 48))


def test_a_config_grid_of_another_patch_count_is_an_error(reference: Any, tmp_path: Path) -> None:
    hub = reference[1]
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        (tmp_path / name).write_bytes((hub / name).read_bytes())
    config = json.loads((tmp_path / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["image_size"] = [16, 80]
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigurationError, match=r"model_cfg\.vision_cfg\.image_size=\(16, 80\) gives a 1x5 grid"):
        clipkit.inspect(str(tmp_path))
    config["model_cfg"]["vision_cfg"]["image_size"] = [16, 96]  # 1x6: the same count, so the config settles it
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    spec = clipkit.inspect(str(tmp_path))
    assert spec.image_resolution == (16, 96) and spec.provenance_of("image_resolution").source == CONFIG


def test_detection_records_a_non_square_grid_as_unsettled() -> None:
    from clipkit.builtin import vit

    state_dict = ocl.meta_model(CFG).state_dict()
    state_dict["visual.positional_embedding"] = torch.empty(18, 64, device="meta")  # 17 patches: only 1x17 or 17x1
    spec = vit.infer_spec(state_dict)
    assert spec.provenance_of("image_resolution").source == UNSETTLED
    assert "18 rows: 17 patches" in spec.provenance_of("image_resolution").detail
