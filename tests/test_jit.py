"""``jit=True``: TorchScript archives loaded and patched for the device and dtype, and exported (``clipkit.jit``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import clipkit
import factories
import jit_fixtures
from clipkit import archive
from clipkit.errors import JITError
from clipkit.export import to_torchscript as export_torchscript
from clipkit.jit import load_jit, patch_device, patch_dtype

CONFIGS = [factories.TINY_VIT, factories.TINY_RESNET]
IDS = [c.name for c in CONFIGS]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, dict[str, torch.Tensor]]]:
    """name -> (release-like fp16 archive with "cpu" constants, its "cuda:0" twin, the traced state dict)."""
    return jit_fixtures.make_releases(tmp_path_factory.mktemp("releases"), CONFIGS)


def _raw(path: Path) -> torch.jit.ScriptModule:
    """The archive as TorchScript loads it, unpatched."""
    with jit_fixtures.quiet_torchscript():
        return torch.jit.load(str(path), map_location="cpu")


def _outputs(model: nn.Module, config: factories.CLIPConfig) -> dict[str, torch.Tensor]:
    images, tokens = factories.sample_images(config), factories.sample_tokens(config)
    with torch.no_grad():
        logits_per_image, logits_per_text = model(images, tokens)
        return {
            "image": model.encode_image(images),
            "text": model.encode_text(tokens),
            "logits_per_image": logits_per_image,
            "logits_per_text": logits_per_text,
        }


def _assert_outputs_close(ours: dict, theirs: dict, *, tol: float) -> None:
    for key in theirs:
        torch.testing.assert_close(ours[key].float(), theirs[key].float(), rtol=tol, atol=tol, msg=key)


# -- the CUDA twins on the CPU -------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_cuda_twin_runs_on_cpu_in_float32_like_the_jit_false_model(releases, config) -> None:
    _, twin, _ = releases[config.name]
    model, _ = clipkit.load(twin, jit=True, device="cpu")
    assert isinstance(model, torch.jit.ScriptModule)
    assert not model.training
    floats = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in floats)
    ours = _outputs(model, config)
    assert all(value.dtype == torch.float32 for value in ours.values())
    plain, _ = clipkit.load(twin, jit=False, device="cpu")
    _assert_outputs_close(ours, _outputs(plain, config), tol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_cuda_twin_matches_the_archives_own_numbers(releases, config) -> None:
    path, twin, _ = releases[config.name]
    archives_own = _outputs(_raw(path), config)  # the fp16 archive run by TorchScript itself, on the CPU
    assert archives_own["image"].dtype == torch.float16
    half, _ = load_jit(twin, "cpu", dtype=torch.float16)  # devices patched, precision untouched
    _assert_outputs_close(_outputs(half, config), archives_own, tol=0)
    full, _ = load_jit(twin, "cpu")
    patched_cpu_archive, _ = load_jit(path, "cpu")
    _assert_outputs_close(_outputs(full, config), _outputs(patched_cpu_archive, config), tol=0)
    _assert_outputs_close(_outputs(full, config), archives_own, tol=2e-2)  # fp32 against the fp16 run


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_jit_true_matches_the_reference_model(releases, config) -> None:
    _, twin, traced = releases[config.name]
    model, _ = load_jit(twin, "cpu")
    reference = factories.reference_model(traced)
    images, tokens = factories.sample_images(config), factories.sample_tokens(config)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_the_twin_really_says_cuda_and_cannot_run_unpatched_on_cpu(releases) -> None:
    path, twin, _ = releases["tiny-vit"]
    original, rewritten = jit_fixtures.device_constants(path), jit_fixtures.device_constants(twin)
    assert set(original) == {"cpu"}
    assert set(rewritten) == {"cuda:0"} and sum(rewritten.values()) == sum(original.values())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            _raw(twin).encode_image(factories.sample_images(factories.TINY_VIT))


def test_patching_leaves_no_foreign_device_or_half_constant(releases) -> None:
    _, twin, _ = releases["tiny-resnet"]
    model, _ = load_jit(twin, "cpu")
    assert set(jit_fixtures.device_constants(model)) == {"cpu"}
    assert patch_device(model, "cpu") == 0
    assert patch_dtype(model, torch.float16, torch.float32) == 0
    raw = _raw(twin)
    assert patch_device(raw, "cpu") == sum(jit_fixtures.device_constants(twin).values())
    assert patch_dtype(raw, torch.float16, torch.float32) > 0


def test_bfloat16_on_cpu_rewrites_half_constants_to_bfloat16(releases) -> None:
    _, twin, _ = releases["tiny-vit"]
    model, _ = load_jit(twin, "cpu", dtype=torch.bfloat16)
    assert {t.dtype for t in model.parameters() if t.is_floating_point()} <= {torch.bfloat16, torch.float32}
    ours = _outputs(model, factories.TINY_VIT)
    assert ours["image"].dtype == torch.bfloat16
    full, _ = load_jit(twin, "cpu")
    _assert_outputs_close(ours, _outputs(full, factories.TINY_VIT), tol=6e-2)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_preprocess_follows_the_archives_input_resolution(releases, config) -> None:
    _, twin, _ = releases[config.name]
    model, preprocess = clipkit.load(twin, jit=True, device="cpu")
    assert int(model.input_resolution) == config.image_resolution
    image = preprocess(Image.new("RGB", (50, 70), (200, 30, 90)))
    assert tuple(image.shape) == (3, config.image_resolution, config.image_resolution)
    assert load_jit(twin, "cpu")[1] == config.image_resolution


# -- walking graphs defensively ------------------------------------------------------------------------------


def test_an_archive_without_forward_is_patched_and_runs(tmp_path: Path) -> None:
    path = jit_fixtures.make_archive_without_forward(factories.TINY_VIT, tmp_path / "no-forward.pt")
    with pytest.raises(RuntimeError, match="forward"):
        _ = _raw(path).graph  # what the reference's patcher trips over
    model, resolution = load_jit(path, "cpu")
    assert resolution == factories.TINY_VIT.image_resolution
    with torch.no_grad():
        features = model.encode_image(factories.sample_images(factories.TINY_VIT))
        text = model.encode_text(factories.sample_tokens(factories.TINY_VIT))
    assert features.dtype == text.dtype == torch.float32
    assert features.shape == (2, factories.TINY_VIT.embed_dim)


class _NarrowToHalf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float16)[:, :5] * 1


def test_a_half_constant_shared_with_an_integer_keeps_the_integer(tmp_path: Path) -> None:
    with jit_fixtures.quiet_torchscript():
        torch.jit.save(torch.jit.trace(_NarrowToHalf(), torch.randn(2, 8)), str(tmp_path / "narrow.pt"))
    model = _raw(tmp_path / "narrow.pt")
    graph = model.graph
    to_node = graph.findNode("aten::to")
    slices = graph.findAllNodes("aten::slice")
    # the premise: one pooled constant 5 is both the dtype (half) and the slice end
    assert any(to_node.inputsAt(1).debugName() == s.inputsAt(3).debugName() for s in slices)
    assert patch_dtype(model, torch.float16, torch.float32) == 1
    out = model(torch.randn(2, 8))
    assert out.dtype == torch.float32 and out.shape == (2, 5)


# -- clear errors --------------------------------------------------------------------------------------------


def test_a_torchscript_archive_that_is_not_clip_is_a_jit_error(tmp_path: Path) -> None:
    path = jit_fixtures.make_non_clip_archive(tmp_path / "classifier.pt")
    with pytest.raises(JITError, match="not a CLIP model.*encode_image"):
        load_jit(path, "cpu")
    with pytest.raises(JITError, match="not a CLIP model"):
        clipkit.load(path, jit=True, device="cpu")


@pytest.mark.parametrize("format", ["zip", "legacy", "safetensors"])
def test_jit_true_on_a_plain_state_dict_is_a_jit_error(tmp_path: Path, format: str) -> None:
    path = tmp_path / f"weights.{format}"
    factories.write_checkpoint(path, factories.TINY_VIT, format=format)
    with pytest.raises(JITError, match="jit=False"):
        clipkit.load(path, jit=True, device="cpu")
    with pytest.raises(JITError, match="not a TorchScript archive"):
        load_jit(path, "cpu")


def test_jit_true_does_not_pass_torchs_deprecation_warnings_on(releases) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clipkit.load(releases["tiny-vit"][1], jit=True, device="cpu")
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]


# -- export --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clipkit_model(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    """A float32 clipkit ViT model loaded from a plain checkpoint."""
    path = tmp_path_factory.mktemp("plain") / "vit.pt"
    factories.write_checkpoint(path, factories.TINY_VIT, seed=3)
    model, _ = clipkit.load(path, device="cpu")
    return model


def test_export_round_trips_a_clipkit_model(clipkit_model: nn.Module, tmp_path: Path) -> None:
    path = export_torchscript(clipkit_model, tmp_path / "exported.pt")
    config = factories.TINY_VIT
    state = archive.read_torchscript_state_dict(path)
    weights, metadata = archive.split_metadata(state)
    assert metadata == {
        "input_resolution": config.image_resolution,
        "context_length": config.context_length,
        "vocab_size": config.vocab_size,
    }
    expected = clipkit_model.state_dict()
    assert set(weights) == set(expected)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    model, resolution = load_jit(path, "cpu")
    assert resolution == config.image_resolution
    _assert_outputs_close(_outputs(model, config), _outputs(clipkit_model, config), tol=1e-5)


def test_export_in_half_precision_is_shaped_like_a_release_and_leaves_the_model_alone(
    clipkit_model: nn.Module, tmp_path: Path
) -> None:
    before = {k: v.clone() for k, v in clipkit_model.state_dict().items()}
    path = export_torchscript(clipkit_model, tmp_path / "half.pt", dtype=torch.float16)
    state = archive.read_torchscript_state_dict(path)
    assert state["visual.conv1.weight"].dtype == torch.float16
    assert state["transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    assert state["ln_final.weight"].dtype == torch.float32  # norms stay float32, as in the releases
    assert state["input_resolution"].dtype == torch.int64 and state["input_resolution"].dim() == 0
    after = clipkit_model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(v.dtype == before[k].dtype for k, v in after.items())
    # the exported fp16 archive behaves like a release: patched to fp32 it matches its jit=False model
    patched, _ = clipkit.load(path, jit=True, device="cpu")
    plain, _ = clipkit.load(path, jit=False, device="cpu")
    _assert_outputs_close(_outputs(patched, factories.TINY_VIT), _outputs(plain, factories.TINY_VIT), tol=1e-5)


def test_export_refuses_a_model_that_is_not_clip(tmp_path: Path) -> None:
    with pytest.raises(JITError, match="encode_image"):
        export_torchscript(nn.Linear(2, 2), tmp_path / "linear.pt")
    assert not (tmp_path / "linear.pt").exists()


# -- on a GPU ------------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_cuda_twin_runs_in_half_precision_on_the_gpu(releases, config) -> None:
    path, twin, _ = releases[config.name]
    model, _ = clipkit.load(twin, jit=True, device="cuda")
    assert set(jit_fixtures.device_constants(model)) == {"cuda"}
    images, tokens = factories.sample_images(config).cuda(), factories.sample_tokens(config).cuda()
    with torch.no_grad():
        image, text = model.encode_image(images), model.encode_text(tokens)
        logits, _ = model(images, tokens)
    assert image.dtype == torch.float16 and image.device.type == "cuda"
    cpu = _outputs(load_jit(twin, "cpu")[0], config)
    torch.testing.assert_close(image.float().cpu(), cpu["image"], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(text.float().cpu(), cpu["text"], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(logits.float().cpu(), cpu["logits_per_image"], rtol=2e-2, atol=2e-1)
    # the archive traced on the CPU runs on the GPU too: its "cpu" constants are patched
    moved, _ = load_jit(path, "cuda")
    with torch.no_grad():
        torch.testing.assert_close(moved.encode_image(images), image, rtol=1e-3, atol=1e-3)


@needs_cuda
def test_float32_on_the_gpu_matches_the_cpu(releases) -> None:
    _, twin, _ = releases["tiny-vit"]
    model, _ = load_jit(twin, "cuda", dtype=torch.float32)
    images = factories.sample_images(factories.TINY_VIT).cuda()
    with torch.no_grad():
        image = model.encode_image(images)
    assert image.dtype == torch.float32
    cpu = _outputs(load_jit(twin, "cpu")[0], factories.TINY_VIT)
    torch.testing.assert_close(image.cpu(), cpu["image"], rtol=1e-2, atol=1e-2)  # cuDNN may convolve in TF32


@needs_cuda
def test_export_on_the_gpu_loads_on_the_cpu(clipkit_model: nn.Module, tmp_path: Path) -> None:
    path = export_torchscript(clipkit_model, tmp_path / "gpu.pt", device="cuda", dtype=torch.float16)
    assert "cuda" in "".join(jit_fixtures.device_constants(path))
    patched, _ = clipkit.load(path, jit=True, device="cpu")
    plain, _ = clipkit.load(path, jit=False, device="cpu")
    _assert_outputs_close(_outputs(patched, factories.TINY_VIT), _outputs(plain, factories.TINY_VIT), tol=1e-5)


@pytest.mark.skipif(
    not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()), reason="needs Apple MPS"
)
def test_cuda_twin_runs_on_mps(releases) -> None:
    _, twin, _ = releases["tiny-vit"]
    model, _ = clipkit.load(twin, jit=True, device="mps")
    images = factories.sample_images(factories.TINY_VIT).to("mps")
    with torch.no_grad():
        image = model.encode_image(images)
    cpu = _outputs(load_jit(twin, "cpu")[0], factories.TINY_VIT)
    torch.testing.assert_close(image.cpu(), cpu["image"], rtol=1e-3, atol=1e-3)
