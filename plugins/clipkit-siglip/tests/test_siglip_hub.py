"""``clipkit.load("hf-hub:<org>/<siglip repo>")`` fetches the weights with their tokenizer and processor files.

A loopback Hub (the suite's ``hub_server``, ``HF_ENDPOINT``) serves a saved
SigLIP directory; the model, its preprocessing and ``clipkit.get_tokenizer``
work from the Hugging Face cache, and only the files of the checkpoint are
downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import SiglipTokenizer

import clipkit
import siglip_reference as ref

pytest.importorskip("huggingface_hub")
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
hub_server = pytest.importorskip("hub_server", reason="runs from the clipkit repository (tests/hub_server.py)")
pytestmark = pytest.mark.usefixtures("siglip_registered")
REPO = "google/siglip-tiny"


def test_hf_hub_fetches_siglip_with_its_tokenizer(tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hf = ref.make_siglip(layers=1, seed=14)
    ref.save_checkpoint(hf, tmp_path / "saved")
    files = {path.name: path.read_bytes() for path in (tmp_path / "saved").iterdir()}
    files["README.md"] = b"# tiny SigLIP\n"
    with hub_server.HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        server.add_repo(REPO, files)
        model, _ = clipkit.load(f"hf-hub:{REPO}", device="cpu")
        tokenizer = clipkit.get_tokenizer(model)
        assert sorted(server.downloads()) == sorted(set(files) - {"README.md"})
    texts = ["a photo of a cat", "日本語 🐱"]
    want = SiglipTokenizer.from_pretrained(tmp_path / "saved")(
        texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(tokenizer(texts), want)
