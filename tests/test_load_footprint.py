"""What a plain ``clipkit.load`` costs a program: the modules it imports and the copies it makes.

A fresh interpreter loads real checkpoints (an official-layout fp16 state
dict, a safetensors file, a release-like TorchScript archive read as data) and
reports which heavy modules got imported, with the stack that first imported
each. Loading in the file's own dtype must leave every weight inside the file's
memory mapping (``/proc/self/maps``): nothing copied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import factories
import jit_fixtures
import pytest
import torch

import clipkit
from clipkit import loader
from clipkit.nn import skip_init_on_meta

#: modules a plain load must not import: torch's compiler stack (which nn.init on the meta device and
#: torchvision pull in: seconds of start-up), the preprocessing and tokenizer libraries (imported on first
#: use), and every optional extra or peer library
HEAVY_MODULES = (
    "torch._dynamo", "torch._inductor", "sympy", "triton", "torchvision", "PIL", "ftfy", "regex",
    "transformers", "open_clip", "clip", "huggingface_hub", "safetensors", "ray", "pyarrow", "pandas",
    "onnx", "onnxruntime", "sentencepiece", "fsspec", "s3fs", "botocore", "aiohttp", "requests", "tqdm",
    "filelock", "skimage", "scipy", "matplotlib",
)

_CHILD = r"""
import json, sys, traceback

import torch  # what torch itself imports is not clipkit's to avoid

heavy = set(json.loads(sys.argv[1])) - set(sys.modules)
first = {}

def audit(event, args):
    if event == "import" and args[0] in heavy and args[0] not in first:
        first[args[0]] = "".join(traceback.format_stack(limit=40)[:-1])

sys.addaudithook(audit)
import clipkit

for path in sys.argv[2:]:
    model, preprocess = clipkit.load(path, device="cpu")

# what recognising an official release by digest does on every load of a release-shaped file: the
# verified-record lookup, then hashing once and reading the memo on the next load
import tempfile
from clipkit import digests
with tempfile.TemporaryDirectory() as cache:
    for _ in range(2):
        for path in sys.argv[2:]:
            digests.file_digest(path, cache)
print("IMPORTED " + json.dumps({name: first.get(name, "?") for name in sorted(heavy) if name in sys.modules}))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The layouts a plain load meets: official fp16 state dict, safetensors, release-like TorchScript archive."""
    root = tmp_path_factory.mktemp("footprint")
    state_dict = root / "vit.pt"
    factories.write_checkpoint(state_dict, factories.TINY_VIT, dtype=torch.float16)
    safetensors = root / "resnet.safetensors"
    factories.write_checkpoint(safetensors, factories.TINY_RESNET, format="safetensors", dtype=torch.float32)
    archive = root / "release.pt"
    with jit_fixtures.quiet_torchscript():
        jit_fixtures.make_release_archive(factories.TINY_RESNET, archive)
    return [state_dict, safetensors, archive]


def test_plain_load_imports_no_heavy_module(checkpoints):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARNINGS")}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(HEAVY_MODULES), *map(str, checkpoints)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("IMPORTED "))
    imported = json.loads(line[len("IMPORTED "):])
    report = "\n\n".join(f"{name} was first imported here:\n{stack}" for name, stack in imported.items())
    assert not imported, f"a plain clipkit.load imported {', '.join(imported)}\n\n{report}"


# -- no copy in the file's own dtype ----------------------------------------------------------------


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's memory mappings of ``path``."""
    target = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") == target:
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                ranges.append((low, high))
    return ranges


def _copied(model: torch.nn.Module, path: Path) -> list[str]:
    """Names of the model's tensors whose bytes lie outside the file's mapping (copies)."""
    ranges = _mapped_ranges(path)
    assert ranges, f"{path} is not memory-mapped at all"
    outside = []
    for name, tensor in model.state_dict().items():
        start = tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size()
        end = start + tensor.numel() * tensor.element_size()
        if not any(low <= start and end <= high for low, high in ranges):
            outside.append(name)
    return outside


needs_proc_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")


@needs_proc_maps
@pytest.mark.parametrize(
    ("config", "file_format", "dtype"),
    [
        (factories.TINY_VIT, "zip", torch.float16),  # the official layout, loaded in half precision on the CPU
        (factories.TINY_RESNET, "zip", torch.float16),
        (factories.TINY_VIT, "safetensors", torch.float32),  # safetensors already in the target dtype
        (factories.TINY_RESNET, "safetensors", torch.float16),
    ],
    ids=["vit-zip-fp16", "resnet-zip-fp16", "vit-safetensors-fp32", "resnet-safetensors-fp16"],
)
def test_loading_in_the_files_own_dtype_copies_nothing(tmp_path, config, file_format, dtype):
    path = tmp_path / f"weights.{'safetensors' if file_format == 'safetensors' else 'pt'}"
    factories.write_checkpoint(path, config, format=file_format, dtype=dtype)
    model, _ = clipkit.load(path, device="cpu", dtype=dtype)
    assert model.visual.dtype == dtype
    assert _copied(model, path) == []


@needs_proc_maps
def test_a_cast_is_a_copy_the_check_sees(tmp_path):
    """The control: loading the fp16 file as float32 must show the half-precision weights as copied."""
    path = tmp_path / "weights.pt"
    state_dict = factories.write_checkpoint(path, factories.TINY_VIT, dtype=torch.float16)
    model, _ = clipkit.load(path, device="cpu")
    halves = sorted(key for key, value in state_dict.items() if value.dtype == torch.float16)
    assert halves and sorted(_copied(model, path)) == halves


# -- building without initialising changes no number ---------------------------------------------------


@pytest.mark.parametrize("config", [factories.TINY_VIT, factories.TINY_RESNET], ids=lambda c: c.name)
def test_meta_build_without_init_gives_the_same_numbers(config):
    state_dict = factories.make_state_dict(config, dtype=torch.float32)
    spec = loader.detect_architecture(state_dict)
    fast = loader.build_for_loading(spec)  # meta device, initialisers skipped
    loader.load_weights(fast, dict(state_dict))
    slow = loader.build_model(spec, device="cpu")  # a real, randomly initialised build
    slow.load_state_dict(state_dict)
    images, tokens = factories.sample_images(config), factories.sample_tokens(config)
    with torch.inference_mode():
        assert torch.equal(fast.eval().encode_image(images), slow.eval().encode_image(images))
        assert torch.equal(fast.encode_text(tokens), slow.encode_text(tokens))


def test_skip_init_leaves_real_tensors_initialised():
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Embedding(10, 8), torch.nn.LayerNorm(8))

    plain = build()
    with skip_init_on_meta():
        under_mode = build()
    for (name, expected), actual in zip(plain.state_dict().items(), under_mode.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_skip_init_returns_meta_targets_untouched():
    with torch.device("meta"), skip_init_on_meta():
        weight = torch.empty(4, 4)
        assert torch.nn.init.normal_(weight) is weight
        assert torch.nn.init.trunc_normal_(weight, std=0.02) is weight
        assert weight.uniform_() is weight and weight.is_meta
