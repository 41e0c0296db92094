"""The conformance kit's checks of the hooks and of detection (mixed into ``PluginConformance``)."""

from __future__ import annotations

import sys
from typing import Any

import attrs
import pluggy
import pytest
import torch

from clipkit.spec import ArchSpec
from clipkit.testing.harness import BUILTIN_SAMPLES, OwnHooks, describe, unrelated_state_dicts


class DetectionChecks:
    """``test_*`` methods on the hooks, ``detect_architecture`` and the spec; the fixtures come from ``PluginConformance``."""

    plugin: Any
    expected_spec: ArchSpec | None

    def test_hooks_match_the_hook_specs(self, conformance_hooks: OwnHooks) -> None:
        """Every ``@hookimpl`` names a real clipkit hook, and the architecture hooks are implemented."""
        try:
            conformance_hooks.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            hooks = ", ".join(sorted(name for name in dir(conformance_hooks.pm.hook) if not name.startswith("_")))
            pytest.fail(f"{exc} (clipkit's hooks: {hooks})")
        for hook in ("detect_architecture", "build_model"):
            assert conformance_hooks.implements(hook), (
                f"plugin {describe(self.plugin)} does not implement {hook}; an architecture plugin needs "
                "detect_architecture and build_model"
            )

    def test_claims_its_sample(self, conformance_hooks: OwnHooks, conformance_sample: dict[str, torch.Tensor]) -> None:
        """``detect_architecture`` answers the sample with a spec, the same one every time (and ``expected_spec`` if set)."""
        first = conformance_hooks.call("detect_architecture", state_dict=conformance_sample, path=None)
        assert isinstance(first, ArchSpec), (
            f"detect_architecture answered {first!r} for the plugin's own sample; it must return a clipkit.ArchSpec"
        )
        again = conformance_hooks.call("detect_architecture", state_dict=dict(conformance_sample), path=None)
        assert again == first, f"detect_architecture is not deterministic: {first!r} then {again!r}"
        if self.expected_spec is not None:
            assert first == self.expected_spec, (
                f"detect_architecture inferred {first!r}, expected {self.expected_spec!r}"
            )

    def test_spec_is_a_frozen_attrs_archspec(self, conformance_spec: ArchSpec) -> None:
        """The spec is plain data: an attrs class derived from ``ArchSpec``, frozen, hashable, comparable."""
        cls = type(conformance_spec)
        assert attrs.has(cls), f"{cls.__name__} is not an attrs class; declare it with @attrs.frozen(kw_only=True)"
        probe = attrs.evolve(conformance_spec)
        try:
            probe.family = "changed"  # type: ignore[misc]
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            pytest.fail(f"{cls.__name__} is mutable; declare it with @attrs.frozen(kw_only=True)")
        copy = attrs.evolve(conformance_spec)
        assert copy == conformance_spec and hash(copy) == hash(conformance_spec), (
            f"{cls.__name__} instances with equal fields must compare and hash equal"
        )
        assert isinstance(conformance_spec.family, str) and conformance_spec.family, "spec.family must be a non-empty str"
        assert isinstance(conformance_spec.image_resolution, int) and conformance_spec.image_resolution > 0, (
            f"spec.image_resolution must be a positive int, got {conformance_spec.image_resolution!r}"
        )

    def test_spec_repr_round_trips(self, conformance_spec: ArchSpec) -> None:
        """``eval(repr(spec))``, with the spec's class and module in scope, gives an equal spec."""
        cls = type(conformance_spec)
        namespace = {**vars(sys.modules[cls.__module__]), cls.__name__: cls}
        text = repr(conformance_spec)
        try:
            rebuilt = eval(text, namespace)  # noqa: S307 - the plugin's own repr, in a test
        except Exception as exc:
            pytest.fail(f"repr of the spec is not valid Python that rebuilds it: {text} ({type(exc).__name__}: {exc})")
        assert rebuilt == conformance_spec, f"{text} evaluates to {rebuilt!r}, which is not equal to the spec"

    def test_ignores_builtin_checkpoints(self, conformance_hooks: OwnHooks) -> None:
        """``detect_architecture`` answers ``None`` for OpenAI-layout ViT and ResNet checkpoints (not its own)."""
        for what, (make, owner) in BUILTIN_SAMPLES.items():
            if self.plugin is sys.modules.get(owner):
                continue
            answer = conformance_hooks.call("detect_architecture", state_dict=make(), path=None)
            assert answer is None, (
                f"detect_architecture of {describe(self.plugin)} claimed an {what} checkpoint with {answer!r}; "
                f"{owner} owns that layout. Claim only your own key/shape signature"
            )

    def test_ignores_unrelated_state_dicts(
        self, conformance_hooks: OwnHooks, conformance_sample: dict[str, torch.Tensor]
    ) -> None:
        """``detect_architecture`` answers ``None`` (rather than raising) for state dicts that are not CLIP at all."""
        for what, state_dict in unrelated_state_dicts(conformance_sample).items():
            try:
                answer = conformance_hooks.call("detect_architecture", state_dict=state_dict, path=None)
            except Exception as exc:
                pytest.fail(f"detect_architecture raised {type(exc).__name__}: {exc} for {what}; answer None instead")
            assert answer is None, f"detect_architecture claimed {what} with {answer!r}; it must answer None"

    def test_builtins_do_not_claim_its_sample(self, conformance_sample: dict[str, torch.Tensor]) -> None:
        """No built-in plugin (other than the plugin itself, when it is one) claims the sample."""
        from clipkit.plugins import PluginRegistry

        builtins = PluginRegistry(entry_points=False)
        answers, failures = builtins.call_all("detect_architecture", state_dict=conformance_sample, path=None)
        others = [(name, spec) for name, spec in answers if builtins.pm.get_plugin(name) is not self.plugin]
        assert not failures, f"built-in plugins failed on the sample: {failures}"
        assert not others, f"built-in plugins claim the plugin's sample: {others}; its key layout must differ"

    def test_one_claimant_through_dispatch(
        self, conformance_registry: Any, conformance_spec: ArchSpec, conformance_sample: dict[str, torch.Tensor]
    ) -> None:
        """Through clipkit's own dispatch, with every installed plugin asked, the plugin is the one claimant."""
        from clipkit.errors import AmbiguousArchitectureError
        from clipkit.loader import detect_architecture

        try:
            spec = detect_architecture(conformance_sample, None, registry=conformance_registry)
        except AmbiguousArchitectureError as exc:
            pytest.fail(f"more than one plugin claims the sample: {exc}")
        assert spec == conformance_spec, f"clipkit's dispatch returned {spec!r}, the plugin alone {conformance_spec!r}"
