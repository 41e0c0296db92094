"""The conformance kit's checks of provenance and of ``configure_spec`` (mixed into ``PluginConformance``)."""

from __future__ import annotations

from typing import Any

import torch

from clipkit.spec import UNRECORDED, ArchSpec
from clipkit.testing.harness import BUILTIN_SAMPLES, OwnHooks, describe


class ProvenanceChecks:
    """``test_*`` methods on where a spec's values come from; the fixtures come from ``PluginConformance``."""

    plugin: Any

    def test_every_field_says_where_it_came_from(self, conformance_spec: ArchSpec) -> None:
        """Each field holding a value has a ``Provenance`` (shapes, config, release, convention, unused).

        ``family`` (the class's own constant) and fields left at ``None`` (not
        applicable) are exempt.
        """
        missing = [name for name, value in conformance_spec.to_dict().items()
                   if name != "family" and value is not None
                   and conformance_spec.provenance_of(name).source == UNRECORDED]
        assert not missing, (
            f"detect_architecture of {describe(self.plugin)} leaves {', '.join(missing)} without a provenance; "
            "pass provenance={field: clipkit.spec.Provenance.shapes(key) / .config(file, key) / .convention(why)} "
            "to the spec, so clipkit inspect can show it and clipkit.load can warn about guesses"
        )

    def test_configure_spec_declines_other_checkpoints(self, conformance_hooks: OwnHooks) -> None:
        """``configure_spec`` (if implemented) answers ``None`` for the built-ins' specs with no file of its own."""
        if not conformance_hooks.implements("configure_spec"):
            return
        from clipkit.plugins import PluginRegistry

        builtins = PluginRegistry(entry_points=False)
        for what, (make, _) in BUILTIN_SAMPLES.items():
            spec = builtins.call_all("detect_architecture", state_dict=make(), path=None)[0][0][1]
            answer = conformance_hooks.call("configure_spec", spec=spec, path=None)
            assert answer is None, f"configure_spec answered {answer!r} for an {what} spec without a config of its own"

    def test_configure_spec_keeps_the_spec_class(
        self, conformance_hooks: OwnHooks, conformance_spec: ArchSpec, conformance_sample: dict[str, torch.Tensor]
    ) -> None:
        """``configure_spec`` on the plugin's own spec (no file beside it) declines or returns the same kind of spec."""
        if not conformance_hooks.implements("configure_spec"):
            return
        answer = conformance_hooks.call("configure_spec", spec=conformance_spec, path=None)
        assert answer is None or type(answer) is type(conformance_spec), (
            f"configure_spec turned a {type(conformance_spec).__name__} into {answer!r}"
        )
