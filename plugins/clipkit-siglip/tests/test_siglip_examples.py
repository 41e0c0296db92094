"""A SigLIP checkpoint works end to end in clipkit's examples and ``classify``: sigmoid scores, said to be sigmoid.

The expected scores are transformers' own: ``sigmoid(logits_per_image)`` of the
``SiglipModel`` the directory was saved from, on ``SiglipProcessor`` inputs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import clipkit.batch
import siglip_reference as ref

pytestmark = pytest.mark.usefixtures("siglip_registered")
skimage_data = pytest.importorskip("skimage.data")
REPO = Path(__file__).resolve().parents[3]
PHOTOS = [Path(skimage_data.data_dir) / name for name in ("chelsea.png", "rocket.jpg", "camera.png")]
LABELS = ("cat", "rocket", "camera")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    """A saved SigLIP directory and transformers' sigmoid scores of PHOTOS against 'a photo of a {label}.'."""
    directory = tmp_path_factory.mktemp("siglip-examples") / "siglip"
    hf = ref.make_siglip(seed=13)
    processor = ref.save_checkpoint(hf, directory)
    inputs = processor(text=[f"a photo of a {label}." for label in LABELS], images=[Image.open(p) for p in PHOTOS],
                       padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = hf(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits_per_image
    return directory, torch.sigmoid(logits)


def test_zero_shot_example_prints_sigmoid_scores(siglip_dir, capsys):
    directory, expected = siglip_dir
    spec = importlib.util.spec_from_file_location("zero_shot_example", REPO / "examples" / "zero_shot.py")
    zero_shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zero_shot)  # in this process: a subprocess would spend its time importing torch
    zero_shot.main([*map(str, PHOTOS), "--labels", *LABELS, "--model", str(directory), "--device", "cpu", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["score"] for row in rows] == ["sigmoid"] * 3
    got = torch.tensor([[row["probs"][label] for label in LABELS] for row in rows])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    zero_shot.main([str(PHOTOS[0]), "--labels", *LABELS, "--model", str(directory), "--device", "cpu"])
    assert capsys.readouterr().out.startswith("scores: sigmoid, an independent probability per label")


def test_classify_gives_sigmoid_scores(siglip_dir, tmp_path):
    directory, expected = siglip_dir
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, path in enumerate(PHOTOS):  # names sort in PHOTOS' order
        shutil.copy(path, photos / f"{i}-{path.name}")
    result = clipkit.batch.classify(photos, tmp_path / "out", model=str(directory), labels=LABELS, top_k=3,
                                    device="cpu", workers=0, progress=False)
    assert result.score_kind == "sigmoid"
    table = result.read().to_pydict()
    assert set(table["score_kind"]) == {"sigmoid"}
    got = torch.tensor([[dict(zip(labels, scores))[label] for label in LABELS]
                        for labels, scores in zip(table["labels"], table["scores"])])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
