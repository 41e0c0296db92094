"""Four processes load one URL into an empty cache at once: one download reaches the server, four models work."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import clipkit
import factories
from clipkit import fetching
from http_server import LoopbackServer

PROCESSES = 4

LOADER_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch
import clipkit

url, cache, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
clipkit.available_models()  # plugins loaded before the start line, so the four fetches overlap
ready.touch()
deadline = time.monotonic() + 120
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
model, preprocess = clipkit.load(url, device="cpu", download_root=cache)
gen = torch.Generator().manual_seed(0)
res = int(model.visual.input_resolution)
images = torch.randn((2, 3, res, res), generator=gen)
tokens = torch.randint(1, int(model.vocab_size) - 1, (2, int(model.context_length)), generator=gen)
with torch.no_grad():
    image_features = model.encode_image(images)
    text_features = model.encode_text(tokens)
print(json.dumps({
    "image": image_features.double().sum().item(),
    "text": text_features.double().sum().item(),
    "shape": list(image_features.shape),
    "finite": bool(torch.isfinite(image_features).all() and torch.isfinite(text_features).all()),
}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("checkpoint") / "tiny-vit.pt"
    factories.save_state_dict(factories.make_state_dict(factories.TINY_VIT, seed=3), path)
    return path, path.read_bytes()


def _features(model: torch.nn.Module) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    res = int(model.visual.input_resolution)
    images = torch.randn((2, 3, res, res), generator=gen)
    tokens = torch.randint(1, int(model.vocab_size) - 1, (2, int(model.context_length)), generator=gen)
    with torch.no_grad():
        return {"image": model.encode_image(images).double().sum().item(),
                "text": model.encode_text(tokens).double().sum().item()}


def test_four_processes_download_once_and_all_load(tmp_path: Path, checkpoint: tuple[Path, bytes]) -> None:
    local, data = checkpoint
    digest = hashlib.sha256(data).hexdigest()
    route = f"/clip/models/{digest}/tiny-vit.pt"
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPKIT_")}
    env["no_proxy"] = "127.0.0.1"
    with LoopbackServer() as server:
        # ~0.7 MB sent in 16 KiB pieces 20 ms apart: the first download is still running when the others ask.
        server.add(route, data, throttle=0.02)
        marks = [(tmp_path / f"ready-{i}", tmp_path / "go") for i in range(PROCESSES)]
        children = [
            subprocess.Popen([sys.executable, "-c", LOADER_SCRIPT, server.url(route), str(cache), str(ready), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for ready, go in marks
        ]
        try:
            deadline = time.monotonic() + 120
            while not all(ready.exists() for ready, _ in marks) and time.monotonic() < deadline:
                assert all(child.poll() is None for child in children), [c.communicate() for c in children]
                time.sleep(0.02)
            (tmp_path / "go").touch()
            outputs = [child.communicate(timeout=180) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
        assert [child.returncode for child in children] == [0] * PROCESSES, [err for _, err in outputs]
        assert server.count(route) == 1  # one download for four processes
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(r["finite"] and r["shape"] == [2, factories.TINY_VIT.embed_dim] for r in results)
    model, _ = clipkit.load(str(local), device="cpu")
    expected = _features(model)
    for result in results:
        assert result["image"] == pytest.approx(expected["image"], rel=1e-6)
        assert result["text"] == pytest.approx(expected["text"], rel=1e-6)
    cached = fetching.cache_path(server.url(route), cache)
    assert cached.name == f"tiny-vit-{digest[:12]}.pt"
    assert cached.read_bytes() == data
    assert fetching.read_record(cached).sha256 == digest
    assert not list((cache / fetching.META_DIR).glob("*" + fetching.PART_SUFFIX))
