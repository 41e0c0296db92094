"""Every spec field says where its value came from; guesses are announced, and keywords cannot contradict shapes."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

import clipkit
from clipkit.digests import file_digest, memo_path
from clipkit.errors import AssumptionWarning, ConfigurationError
from clipkit.fetching import sha256_file
from clipkit.provenance import apply_release
from clipkit.spec import CALLER, CONVENTION, RELEASE, SHAPES, UNUSED, Provenance
from tests import factories


@pytest.fixture(scope="module")
def bare_vit(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bare") / "tiny-vit.pt"
    factories.write_checkpoint(path, factories.TINY_VIT)
    return str(path)


def test_inspect_records_every_field_source(bare_vit: str) -> None:
    spec = clipkit.inspect(bare_vit)
    assert spec.provenance_of("vision_width").source == SHAPES
    assert spec.provenance_of("vision_width").detail == "visual.conv1.weight"
    assert spec.provenance_of("quick_gelu").source == CONVENTION
    assert spec.provenance_of("vision_heads").source == CONVENTION
    assert spec.provenance_of("text_eos_id").source == UNUSED
    unrecorded = [name for name in spec.to_dict() if spec.provenance_of(name).source == "unrecorded"]
    assert unrecorded == []


def test_a_bare_file_warns_once_naming_each_guess(bare_vit: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clipkit.load(bare_vit, device="cpu")
    assumptions = [w for w in caught if issubclass(w.category, AssumptionWarning)]
    assert len(assumptions) == 1
    warning = assumptions[0].message
    assert {"quick_gelu", "vision_heads", "text_heads", "text_pool"} <= set(warning.fields)
    assert "quick_gelu=True" in str(warning) and "clipkit.load(..., quick_gelu=...)" in str(warning)
    assert assumptions[0].filename == __file__  # points at the caller's line


def test_a_keyword_settles_a_guess_and_is_recorded(bare_vit: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = clipkit.load(bare_vit, device="cpu", quick_gelu=False, vision_heads=2)
    (warning,) = [w.message for w in caught if issubclass(w.category, AssumptionWarning)]
    assert "quick_gelu" not in warning.fields and "vision_heads" not in warning.fields
    spec = model.clipkit_spec
    assert spec.quick_gelu is False and spec.provenance_of("quick_gelu").source == CALLER
    assert model.visual.transformer.heads == 2


def test_a_keyword_contradicting_a_shape_is_an_error(bare_vit: str) -> None:
    with pytest.raises(ConfigurationError, match=r"vision_width=128 contradicts the checkpoint.*visual\.conv1\.weight"):
        clipkit.load(bare_vit, device="cpu", vision_width=128)


def test_a_keyword_equal_to_the_shapes_is_accepted(bare_vit: str) -> None:
    model, _ = clipkit.load(bare_vit, device="cpu", vision_width=64, quick_gelu=True)
    assert model.clipkit_spec.provenance_of("vision_width").source == SHAPES


def test_provenance_is_metadata_not_identity(bare_vit: str) -> None:
    spec = clipkit.inspect(bare_vit)
    assert spec == factories.TINY_VIT.spec() and hash(spec) == hash(factories.TINY_VIT.spec())
    assert "provenance" not in repr(spec) and "provenance" not in spec.to_dict()


class _TinyRelease:
    """A plugin publishing the tiny ViT file as a release, with its release table row."""

    def __init__(self, path: Path) -> None:
        self.entry = clipkit.ModelSource(
            url=path.as_uri(), sha256=sha256_file(path), architecture=factories.TINY_VIT.spec().to_dict()
        )

    @clipkit.hookimpl
    def register_models(self) -> dict[str, clipkit.ModelSource]:
        return {"tiny-release": self.entry}


def _assumptions(source: str, **kwargs) -> tuple[torch.nn.Module, list[AssumptionWarning]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = clipkit.load(source, device="cpu", **kwargs)
    return model, [w.message for w in caught if issubclass(w.category, AssumptionWarning)]


def test_a_release_known_by_digest_settles_the_guesses_and_the_digest_is_memoised(
    bare_vit: str, registry, isolated_cache: Path
) -> None:
    registry.register(_TinyRelease(Path(bare_vit)), name="tiny-release")
    model, assumptions = _assumptions(bare_vit)
    assert assumptions == []
    assert model.clipkit_spec.provenance_of("quick_gelu") == Provenance.release("tiny-release")
    memo = json.loads(memo_path(isolated_cache).read_text())
    assert memo[str(Path(bare_vit).resolve())]["sha256"] == sha256_file(bare_vit)
    os.utime(bare_vit, ns=(1, 1))  # another version of the file: its digest is computed again
    assert file_digest(bare_vit, isolated_cache) == sha256_file(bare_vit)
    assert json.loads(memo_path(isolated_cache).read_text())[str(Path(bare_vit).resolve())]["mtime_ns"] == 1


def test_a_release_known_by_name_needs_no_hashing(bare_vit: str, registry, isolated_cache: Path) -> None:
    registry.register(_TinyRelease(Path(bare_vit)), name="tiny-release")
    model, assumptions = _assumptions("tiny-release")
    assert assumptions == [] and model.clipkit_spec.provenance_of("vision_heads").source == RELEASE


def test_same_shapes_other_bytes_is_not_the_release(bare_vit: str, registry, tmp_path: Path) -> None:
    registry.register(_TinyRelease(Path(bare_vit)), name="tiny-release")
    other = tmp_path / "retrained.pt"
    factories.write_checkpoint(other, factories.TINY_VIT, seed=7)
    model, assumptions = _assumptions(str(other))
    assert len(assumptions) == 1 and "quick_gelu" in assumptions[0].fields


def test_the_nine_release_rows_match_the_official_shapes() -> None:
    from clipkit.builtin.models import OFFICIAL_MODELS
    from clipkit.builtin import resnet, vit

    for name, config in factories.OFFICIAL_CONFIGS.items():
        spec = (vit if config.family == "vit" else resnet).infer_spec(factories.make_state_dict(config, device="meta"))
        settled = apply_release(spec, name, OFFICIAL_MODELS[name])
        assert settled == config.spec() and settled.guessed_fields() == []
