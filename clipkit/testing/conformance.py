"""``PluginConformance``: the base class whose inherited ``test_*`` methods check a plugin's hook contracts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pluggy
import pytest
import torch

from clipkit.spec import ArchSpec
from clipkit.testing.detection_checks import DetectionChecks
from clipkit.testing.harness import OwnHooks, build_for_loading, describe, per_class, registered_names
from clipkit.testing.model_checks import ModelChecks
from clipkit.testing.provenance_checks import ProvenanceChecks
from clipkit.testing.tokenizer_checks import TokenizerChecks

__all__ = ["PluginConformance"]


class PluginConformance(DetectionChecks, ModelChecks, TokenizerChecks, ProvenanceChecks):
    """Inherit from this in a ``Test*`` class to run clipkit's hook-contract checks against your plugin.

    Set ``plugin`` to the module (or object) holding your ``@clipkit.hookimpl``
    functions and implement ``sample_state_dict()`` to return a state dict in
    your plugin's layout (random weights are fine: ``YourModel(spec).state_dict()``).
    Optionally set ``expected_spec`` to the spec detection must return, and
    override ``sample_checkpoint(directory)`` to write the sample the way your
    users' files look. Every check is a separate ``test_*`` method whose failure
    message names the contract that was broken.
    """

    #: the module or object with the ``@clipkit.hookimpl`` functions under test
    plugin: ClassVar[Any] = None
    #: the spec ``detect_architecture`` must return for the sample (``None``: any spec is accepted)
    expected_spec: ClassVar[ArchSpec | None] = None
    #: the name the kit registers the plugin under when it is not registered yet
    plugin_name: ClassVar[str | None] = None

    # -- what the author provides ----------------------------------------------------------

    def sample_state_dict(self) -> Mapping[str, torch.Tensor]:
        """Return a state dict in the plugin's own layout; every subclass must implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} must define sample_state_dict(self) returning a state dict your plugin "
            "claims, e.g. `return MyCLIP(MY_SPEC).state_dict()`"
        )

    def sample_checkpoint(self, directory: Path) -> Path:
        """Write the sample checkpoint under ``directory`` and return the path ``clipkit.load`` should get.

        The default saves ``sample_state_dict()`` with ``torch.save`` as
        ``sample.pt``. Override to write your format's real files (a directory
        with side files, safetensors, a wrapper dict).
        """
        path = Path(directory) / "sample.pt"
        torch.save(dict(self.sample_state_dict()), path)
        return path

    # -- fixtures --------------------------------------------------------------------------

    @pytest.fixture
    def conformance_hooks(self, request: pytest.FixtureRequest) -> OwnHooks:
        """The plugin's own hook implementations, validated against clipkit's hook specs."""
        if self.plugin is None:
            pytest.fail(f"{type(self).__name__}.plugin is not set: point it at your module of @clipkit.hookimpl functions")
        try:
            return per_class(request, "hooks", lambda: OwnHooks(self.plugin))
        except pluggy.PluginValidationError as exc:
            pytest.fail(f"plugin {describe(self.plugin)} does not match clipkit's hook specs: {exc}")

    @pytest.fixture
    def conformance_sample(self, request: pytest.FixtureRequest) -> dict[str, torch.Tensor]:
        """The author's sample state dict (made once per class), checked to be a non-empty ``{str: Tensor}`` mapping."""
        return per_class(request, "sample", self._checked_sample)

    def _checked_sample(self) -> dict[str, torch.Tensor]:
        sample = self.sample_state_dict()
        if not isinstance(sample, Mapping) or not sample:
            pytest.fail(f"sample_state_dict() must return a non-empty mapping of tensors, got {type(sample).__name__}")
        bad = [key for key, value in sample.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
        if bad:
            pytest.fail(f"sample_state_dict() must map str keys to tensors; these entries do not: {bad[:5]}")
        return dict(sample)

    @pytest.fixture
    def conformance_spec(self, conformance_hooks: OwnHooks, conformance_sample: dict[str, torch.Tensor]) -> ArchSpec:
        """The spec the plugin's own ``detect_architecture`` returns for the sample."""
        spec = conformance_hooks.call("detect_architecture", state_dict=conformance_sample, path=None)
        if not isinstance(spec, ArchSpec):
            pytest.fail(
                f"detect_architecture of {describe(self.plugin)} answered {spec!r} for the sample from "
                "sample_state_dict(); it must claim its own layout with a clipkit.ArchSpec subclass"
            )
        return spec

    @pytest.fixture
    def conformance_model(
        self,
        request: pytest.FixtureRequest,
        conformance_hooks: OwnHooks,
        conformance_spec: ArchSpec,
        conformance_sample: dict[str, torch.Tensor],
    ) -> torch.nn.Module:
        """The plugin's model for the sample (built once per class): meta-built, loaded by assignment, float32 CPU, eval."""
        from clipkit.loader import load_weights, place

        def make() -> torch.nn.Module:
            model = build_for_loading(conformance_hooks, conformance_spec)
            if not isinstance(model, torch.nn.Module):
                pytest.fail(
                    f"build_model of {describe(self.plugin)} answered {model!r} for its own spec {conformance_spec!r}"
                )
            load_weights(model, conformance_sample)
            place(model, torch.device("cpu"), torch.float32)
            return model.eval()

        return per_class(request, "model", make)

    @pytest.fixture
    def conformance_registry(self) -> Iterator[Any]:
        """The process-wide registry with the plugin registered; afterwards it holds exactly what it held before."""
        from clipkit.plugins import get_registry

        registry = get_registry()
        before = registered_names(registry)
        added = None
        if not registry.pm.is_registered(self.plugin):
            name = self.plugin_name or f"conformance:{describe(self.plugin)}"
            added = registry.register(self.plugin, name=name, origin="runtime")
        try:
            yield registry
        finally:
            if added is not None:
                registry.unregister(added)
            after = registered_names(registry)
            assert after == before, f"the conformance kit changed the plugin registry: {before} -> {after}"
