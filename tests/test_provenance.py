"""Every spec field says where its value came from; guesses are announced, and keywords cannot contradict shapes."""

from __future__ import annotations

import warnings

import pytest

import clipkit
from clipkit.errors import AssumptionWarning, ConfigurationError
from clipkit.spec import CALLER, CONVENTION, SHAPES, UNUSED
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
