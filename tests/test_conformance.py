"""The built-in ViT and ResNet plugins pass the same conformance kit that third-party plugins run.

The samples come from the one writer of the official layout
(``clipkit.testing.checkpoints``, through ``tests/factories.py``; the numerics
tests check its output against open_clip), and the kit's tiny samples are that
writer's output, claimed by the built-ins with the expected spec, so "not your
checkpoint" in the kit really is the official layout.
"""

from __future__ import annotations

import pytest
import torch

import clipkit.builtin.resnet
import clipkit.builtin.vit
import factories
from clipkit import testing
from clipkit.loader import detect_architecture
from clipkit.plugins import PluginRegistry


class TestBuiltinViT(testing.PluginConformance):
    plugin = clipkit.builtin.vit
    expected_spec = factories.TINY_VIT.spec()

    def sample_state_dict(self):
        return factories.make_state_dict(factories.TINY_VIT, seed=3)


class TestBuiltinResNet(testing.PluginConformance):
    plugin = clipkit.builtin.resnet
    expected_spec = factories.TINY_RESNET.spec()

    def sample_state_dict(self):
        return factories.make_state_dict(factories.TINY_RESNET, seed=4)

    def sample_checkpoint(self, directory):
        path = directory / "rn.safetensors"
        factories.save_state_dict(self.sample_state_dict(), path, format="safetensors")
        return path


def _shapes(state_dict):
    return {key: (tuple(value.shape), value.dtype == torch.long) for key, value in state_dict.items()}


@pytest.mark.parametrize(
    ("make", "config"),
    [
        (testing.openai_vit_state_dict, factories.TINY_VIT.with_(
            embed_dim=16, image_resolution=16, vision_layers=1, vision_width=32, context_length=8, vocab_size=64,
            text_width=32, text_layers=1)),
        (testing.openai_resnet_state_dict, factories.TINY_RESNET.with_(
            embed_dim=16, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8, context_length=8,
            vocab_size=64, text_width=32, text_layers=1)),
    ],
    ids=["vit", "resnet"],
)
def test_kit_samples_are_exactly_the_official_layout(make, config):
    sample = make(seed=1)
    assert _shapes(sample) == _shapes(factories.make_state_dict(config))
    assert {value.dtype for value in sample.values()} <= {torch.float32, torch.long}
    builtins = PluginRegistry(entry_points=False)
    assert detect_architecture(sample, registry=builtins) == config.spec()


def test_kit_samples_are_seeded():
    a, b, c = testing.openai_vit_state_dict(seed=5), testing.openai_vit_state_dict(seed=5), testing.openai_vit_state_dict(seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.proj"], c["visual.proj"])


def test_sample_tokens_put_end_of_text_at_the_row_maximum():
    tokens = testing.sample_tokens(8, 64, 5)
    assert tokens.shape == (5, 8) and tokens.dtype == torch.long
    ends = tokens.argmax(dim=-1)
    assert (tokens[torch.arange(5), ends] == 63).all()
    assert len(set(ends.tolist())) > 1  # texts of different lengths
    assert (tokens[:, 0] == 62).all()


KIT_USER_MODULE = '''
"""A plugin author's test module: one good plugin object and five broken variants, each run through the kit."""
import math

import attrs
import torch
from torch import nn
from torchvision.transforms import Compose, Resize, ToTensor

import clipkit
from clipkit.plugins import get_registry
from clipkit.spec import Provenance, preprocessing_conventions
from clipkit.testing import PluginConformance

REGISTERED_AT_START = [name for name, _ in get_registry().pm.list_name_plugin()]


@attrs.frozen(kw_only=True)
class LinSpec(clipkit.ArchSpec):
    family: str = "lin"
    embed_dim: int
    vocab_size: int
    context_length: int


@attrs.frozen(kw_only=True, repr=False)
class OpaqueSpec(LinSpec):
    def __repr__(self):
        return f"<lin spec {self.embed_dim}>"


class LinCLIP(nn.Module):
    def __init__(self, spec, device=None, text_extra=0):
        super().__init__()
        self.visual = nn.Linear(3 * spec.image_resolution**2, spec.embed_dim, bias=False, device=device)
        self.visual.input_resolution = spec.image_resolution
        self.text = nn.Embedding(spec.vocab_size, spec.embed_dim + text_extra, device=device)
        self.logit_scale = nn.Parameter(torch.empty((), device=device))
        self.context_length, self.vocab_size = spec.context_length, spec.vocab_size

    def encode_image(self, image):
        return self.visual(image.flatten(1))

    def encode_text(self, text):
        return self.text(text).mean(dim=1)

    def forward(self, image, text):
        i = nn.functional.normalize(self.encode_image(image), dim=-1)
        t = nn.functional.normalize(self.encode_text(text), dim=-1)
        logits = self.logit_scale.exp() * i @ t.t()
        return logits, logits.t()


class Good:
    """Linear CLIP: claims lin.visual.weight."""

    spec_class = LinSpec

    @clipkit.hookimpl
    def detect_architecture(self, state_dict):
        if "visual.weight" not in state_dict or "text.weight" not in state_dict:
            return None
        embed, pixels = state_dict["visual.weight"].shape
        vocab, _ = state_dict["text.weight"].shape
        read = {"image_resolution": Provenance.shapes("visual.weight"), "embed_dim": Provenance.shapes("visual.weight"),
                "vocab_size": Provenance.shapes("text.weight"), "context_length": Provenance.convention("six tokens")}
        return self.spec_class(image_resolution=math.isqrt(pixels // 3), embed_dim=embed, vocab_size=vocab,
                               context_length=6, provenance={**read, **preprocessing_conventions("the default")})

    @clipkit.hookimpl
    def build_model(self, spec):
        return LinCLIP(spec) if isinstance(spec, LinSpec) else None


class Greedy(Good):
    @clipkit.hookimpl
    def detect_architecture(self, state_dict):
        if "visual.proj" in state_dict:
            return LinSpec(image_resolution=8, embed_dim=4, vocab_size=10, context_length=6)
        return Good.detect_architecture(self, state_dict)


class Opaque(Good):
    spec_class = OpaqueSpec


class Allocating(Good):
    @clipkit.hookimpl
    def build_model(self, spec):
        return LinCLIP(spec, device="cpu") if isinstance(spec, LinSpec) else None


class Lopsided(Good):
    @clipkit.hookimpl
    def build_model(self, spec):
        return LinCLIP(spec, text_extra=1) if isinstance(spec, LinSpec) else None

    def sample(self):
        return {"visual.weight": torch.randn(4, 3 * 64), "text.weight": torch.randn(10, 5), "logit_scale": torch.tensor(1.0)}


class MaskedCLIP(LinCLIP):
    def __init__(self, spec):
        super().__init__(spec)
        self.register_buffer("text_weights", torch.linspace(1.0, 2.0, spec.context_length), persistent=False)

    def encode_text(self, text):
        weights = self.text_weights[: text.shape[1], None]
        return (self.text(text) * weights).sum(dim=1) / weights.sum()


class Masked(Good):
    """Computes a non-persistent buffer at construction: clipkit builds it for real, and so does the kit."""

    @clipkit.hookimpl
    def build_model(self, spec):
        return MaskedCLIP(spec) if isinstance(spec, LinSpec) else None


class Squashing(Good):
    @clipkit.hookimpl
    def make_transform(self, spec):
        return Compose([Resize(spec.image_resolution), ToTensor()]) if isinstance(spec, LinSpec) else None


def sample():
    return {"visual.weight": torch.randn(4, 3 * 64), "text.weight": torch.randn(10, 4), "logit_scale": torch.tensor(1.0)}


class TestGood(PluginConformance):
    plugin = Good()
    expected_spec = LinSpec(image_resolution=8, embed_dim=4, vocab_size=10, context_length=6)

    def sample_state_dict(self):
        return sample()


class TestGreedy(TestGood):
    plugin = Greedy()


class TestOpaque(TestGood):
    plugin = Opaque()
    expected_spec = None


class TestAllocating(TestGood):
    plugin = Allocating()


class TestLopsided(TestGood):
    plugin = Lopsided()

    def sample_state_dict(self):
        return self.plugin.sample()


class TestMasked(TestGood):
    plugin = Masked()


class TestSquashing(TestGood):
    plugin = Squashing()


def test_zz_registry_is_as_it_was():
    assert [name for name, _ in get_registry().pm.list_name_plugin()] == REGISTERED_AT_START
'''

EXPECTED_FAILURES = {
    "TestGood": {},
    "TestMasked": {},
    "TestGreedy": {"test_ignores_builtin_checkpoints": "claimed an OpenAI-layout ViT checkpoint"},
    "TestOpaque": {"test_spec_repr_round_trips": "repr of the spec is not valid Python"},
    "TestAllocating": {"test_builds_on_the_meta_device": "build_model allocated tensors under torch.device('meta')"},
    "TestLopsided": {
        "test_encoders_give_declared_shapes": "must share the joint width 4",
        "test_forward_gives_logits_both_ways": "",
        "test_loads_through_clipkit_load": "",
    },
    "TestSquashing": {
        "test_transform_maps_pil_images_to_the_resolution": "expected (3, 8, 8)",
        "test_loads_through_clipkit_load": "",
    },
}


def test_kit_fails_broken_plugins_with_the_contract_named(tmp_path):
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    module = tmp_path / "test_kit_user.py"
    module.write_text(KIT_USER_MODULE)
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", str(module)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert report.exists(), proc.stdout + proc.stderr
    failures: dict[str, dict[str, str]] = {}
    passed = 0
    for case in ET.parse(report).getroot().iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        cls = case.get("classname").rsplit(".", 1)[-1]
        if problem is None:
            passed += 1
        else:
            failures.setdefault(cls, {})[case.get("name")] = problem.get("message", "") + (problem.text or "")
    assert "test_zz_registry_is_as_it_was" not in failures.get("test_kit_user", {}), failures
    for cls, expected in EXPECTED_FAILURES.items():
        got = failures.get(cls, {})
        assert set(got) == set(expected), f"{cls}: failed {sorted(got)}, expected {sorted(expected)}\n{proc.stdout[-3000:]}"
        for name, words in expected.items():
            assert words in got[name], f"{cls}.{name}: {got[name][:800]}"
    assert passed > 60


def test_contributing_snippets_are_true_to_the_code(tmp_path):
    """CONTRIBUTING.md's code: excerpts marked with a path are verbatim in that file; other Python blocks run."""
    import re
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"^( *)```(\w+)\n(.*?)^\1```", text, flags=re.S | re.M)
    runnable = []
    excerpts = 0
    for indent, language, body in blocks:
        body = "\n".join(line[len(indent):] for line in body.splitlines())
        first, _, rest = body.partition("\n")
        marked = re.fullmatch(r"# (\S+\.(?:py|toml))", first)
        if marked:
            source = (root / marked[1]).read_text()
            assert rest.strip() in source, f"CONTRIBUTING.md's excerpt of {marked[1]} is not in that file:\n{rest}"
            excerpts += 1
        elif language == "python":
            runnable.append(body)
        elif language == "toml":
            entry_points = tomllib.loads(body)["project"]["entry-points"]
            assert list(entry_points) == ["clipkit"]
    assert excerpts >= 5 and len(runnable) >= 2
    for number, code in enumerate(runnable):
        script = tmp_path / f"snippet_{number}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"CONTRIBUTING.md snippet failed:\n{code}\n{proc.stderr}"
