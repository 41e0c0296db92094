"""A third-party encoder variant, shipped as its own distribution, loads through clipkit.load.

The test writes a throwaway distribution into a temp dir (pyproject.toml with a
``clipkit`` entry point and one module), installs it with pip into a private
target directory, and runs a fresh interpreter that sees it only through
``PYTHONPATH`` — exactly how a user's environment picks up a plugin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from plugin_dists import env_with, pip_install, write_plugin_dist

PLUGIN_MODULE = '''
"""Claims state dicts with a "toy.visual.weight" key: a linear image encoder and a bag-of-words text encoder."""
import attrs
import torch
from torch import nn

import clipkit


@attrs.frozen(kw_only=True)
class ToySpec(clipkit.ArchSpec):
    family: str = "toy"
    embed_dim: int
    vocab_size: int
    context_length: int


class ToyCLIP(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.context_length = spec.context_length
        self.vocab_size = spec.vocab_size
        pixels = 3 * spec.image_resolution ** 2
        self.visual = nn.Linear(pixels, spec.embed_dim, bias=False)
        self.visual.input_resolution = spec.image_resolution
        self.text = nn.Embedding(spec.vocab_size, spec.embed_dim)
        self.logit_scale = nn.Parameter(torch.empty(()))

    def encode_image(self, image):
        return self.visual(image.flatten(1).to(self.visual.weight.dtype))

    def encode_text(self, text):
        return self.text(text).mean(dim=1)

    def forward(self, image, text):
        i = self.encode_image(image)
        t = self.encode_text(text)
        i = i / i.norm(dim=-1, keepdim=True)
        t = t / t.norm(dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * i @ t.t()
        return logits, logits.t()


@clipkit.hookimpl
def detect_architecture(state_dict):
    if "toy.visual.weight" not in state_dict:
        return None
    embed, pixels = state_dict["toy.visual.weight"].shape
    vocab, _ = state_dict["toy.text.weight"].shape
    return ToySpec(image_resolution=int(round((pixels / 3) ** 0.5)), embed_dim=embed, vocab_size=vocab,
                   context_length=int(state_dict["toy.context_length"].item()))


@clipkit.hookimpl
def build_model(spec):
    if not isinstance(spec, ToySpec):
        return None
    model = ToyCLIP(spec)
    model.register_load_state_dict_pre_hook(_strip_prefix)
    return model


def _strip_prefix(module, state_dict, prefix, *args):
    for key in [k for k in state_dict if k.startswith(prefix + "toy.")]:
        value = state_dict.pop(key)
        if key != prefix + "toy.context_length":
            state_dict[prefix + key[len(prefix) + 4:]] = value
'''

CHILD = """
import json, sys, torch, clipkit
from clipkit.plugins import get_registry
model, preprocess = clipkit.load(sys.argv[1], device="cpu")
from PIL import Image
image = preprocess(Image.new("RGB", (40, 30), (200, 10, 10))).unsqueeze(0)
tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
with torch.no_grad():
    logits, logits_t = model(image, tokens)
torch.save({"logits": logits, "image": image}, sys.argv[2])
info = {i.name: i.origin for i in get_registry().infos()}
print(json.dumps({"class": type(model).__name__, "spec": repr(clipkit.inspect(sys.argv[1])),
                  "origin": info.get("toy"), "dtype": str(next(model.parameters()).dtype),
                  "resolution": model.visual.input_resolution}))
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    root = write_plugin_dist(tmp_path_factory.mktemp("toy-dist"), name="clipkit-toy", version="0.3.1",
                             entry_point="toy", module="clipkit_toy", code=PLUGIN_MODULE)
    return pip_install([root], tmp_path_factory.mktemp("site"))


def test_plugin_distribution_is_picked_up_by_entry_point(installed_plugin, tmp_path):
    g = torch.Generator().manual_seed(1)
    state = {
        "toy.visual.weight": torch.randn(8, 3 * 16 * 16, generator=g).half(),
        "toy.text.weight": torch.randn(50, 8, generator=g),
        "toy.logit_scale": torch.tensor(2.0),
        "toy.context_length": torch.tensor(3),
    }
    ckpt = tmp_path / "toy.pt"
    torch.save({"state_dict": state, "epoch": 1}, ckpt)
    out = tmp_path / "out.pt"
    env = env_with(installed_plugin)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ckpt), str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["class"] == "ToyCLIP"
    assert report["origin"] == "clipkit-toy 0.3.1"
    assert report["spec"].startswith("ToySpec(") and "image_resolution=16" in report["spec"]
    assert report["dtype"] == "torch.float32" and report["resolution"] == 16

    # the plugin's model gives the numbers its weights define
    result = torch.load(out, weights_only=True)
    image = result["image"]
    assert image.shape == (1, 3, 16, 16)
    img = image.flatten(1) @ state["toy.visual.weight"].float().t()
    txt = state["toy.text.weight"][torch.tensor([[1, 2, 3], [4, 5, 6]])].mean(1)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    expected = state["toy.logit_scale"].exp() * img @ txt.t()
    torch.testing.assert_close(result["logits"], expected, rtol=1e-5, atol=1e-5)


def test_without_the_plugin_the_same_checkpoint_has_no_claimant(tmp_path):
    import clipkit
    from clipkit.errors import NoClaimantError

    ckpt = tmp_path / "toy.pt"
    torch.save({"toy.visual.weight": torch.zeros(2, 12), "toy.text.weight": torch.zeros(5, 2)}, ckpt)
    with pytest.raises(NoClaimantError, match="toy.visual.weight") as info:
        clipkit.load(ckpt, device="cpu")
    message = str(info.value)
    assert "clipkit.builtin.vit" in message and "clipkit.builtin.resnet" in message
