"""Settling a detected spec's values by precedence, and warning about what is still a guess.

A detecting plugin returns a spec whose every field has a ``Provenance``
(``clipkit.spec``): read off the shapes, or assumed by convention. The loader
then lets stronger sources replace the assumptions, in this order of strength:

1. the caller's keyword (``clipkit.load(..., quick_gelu=False)``): ``apply_overrides``;
2. a config file beside the weights, read by the plugin that knows it
   (the ``configure_spec`` hook);
3. the official release table (``ModelSource.architecture`` of a release the
   file is known to be, by name or digest): ``apply_release``;
4. the convention default the plugin assumed, and then ``warn_assumptions``
   issues one ``AssumptionWarning`` naming each such field.

A value read off the shapes is a fact: a keyword that contradicts it raises
``ConfigurationError``. (Load-time adaptation keywords that change a shape on
purpose, such as a new image resolution, are taken out of the overrides before
they reach ``apply_overrides``.)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import attrs

from clipkit.errors import AssumptionWarning, ConfigurationError
from clipkit.spec import SHAPES, UNSETTLED, ArchSpec, ModelSource, Provenance

__all__ = ["apply_overrides", "apply_release", "matches_release", "require_settled", "warn_assumptions"]


def apply_overrides(spec: ArchSpec, overrides: Mapping[str, Any]) -> ArchSpec:
    """Return ``spec`` with the caller's keyword values, each recorded as ``CALLER``.

    An unknown keyword, or one whose value contradicts a field read off the
    checkpoint's shapes (``vision_width=512`` for a 768-wide tower), raises
    ``ConfigurationError``; a keyword equal to the shapes' value is accepted and
    changes nothing. The spec class validates the values (types, divisibility).
    """
    if not overrides:
        return spec
    fields = [name for name in attrs.fields_dict(type(spec)) if name != "provenance"]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)} for a {type(spec).__name__}; "
            f"the spec's fields are: {', '.join(fields)}"
        )
    changed = attrs.evolve(spec, **overrides)  # validates and converts
    for name in overrides:
        found = spec.provenance_of(name)
        if found.source == SHAPES and getattr(changed, name) != getattr(spec, name):
            raise ConfigurationError(
                f"{name}={overrides[name]!r} contradicts the checkpoint: its shapes say {name}="
                f"{getattr(spec, name)!r} ({found.detail}). Drop the keyword, or load the checkpoint it describes."
            )
    values = {name: getattr(changed, name) for name in overrides if spec.provenance_of(name).source != SHAPES}
    return spec.with_values(values, Provenance.caller())


def matches_release(spec: ArchSpec, release: ModelSource) -> bool:
    """Whether ``spec``'s family and every field read off the shapes equal ``release.architecture``'s.

    A release without an architecture matches nothing. This is the cheap test
    that decides whether hashing the file to recognise the release is worth it.
    """
    arch = release.architecture
    if not arch or arch.get("family") != spec.family:
        return False
    shaped = [name for name in spec.to_dict() if spec.provenance_of(name).source == SHAPES]
    return all(name in arch and arch[name] == getattr(spec, name) for name in shaped)


def apply_release(spec: ArchSpec, name: str, release: ModelSource) -> ArchSpec:
    """Settle every ``CONVENTION`` field that the release table entry ``name`` knows, recorded as ``RELEASE``.

    Values from the caller or a config file are stronger and stay. A release
    whose shapes disagree with the spec raises ``ConfigurationError``: a file
    known (by name or digest) to be that release cannot have other shapes.
    """
    if not matches_release(spec, release):
        raise ConfigurationError(
            f"the checkpoint is known as the official release {name!r} but its shapes are not that "
            f"release's ({release.architecture}); the file is damaged or mislabelled"
        )
    arch = release.architecture
    values = {
        field: arch[field]
        for field in spec.guessed_fields()
        if field in arch
    }
    return spec.with_values(values, Provenance.release(name)) if values else spec


def require_settled(spec: ArchSpec, source: str) -> None:
    """Raise ``ConfigurationError`` naming every field the shapes left ``UNSETTLED`` and no config or keyword settled.

    Such a field has several values the shapes allow and no convention to
    assume (a non-square ViT grid); its provenance detail says what settles it.
    """
    unsettled = [name for name in spec.to_dict() if spec.provenance_of(name).source == UNSETTLED]
    if unsettled:
        raise ConfigurationError(
            f"{source}: the shapes do not settle {', '.join(unsettled)} and no config or keyword does: "
            + "; ".join(spec.provenance_of(name).detail for name in unsettled)
        )


def warn_assumptions(spec: ArchSpec, source: str, *, stacklevel: int = 3) -> list[str]:
    """Warn once (``AssumptionWarning``) naming every field still at a convention default; return their names.

    The message gives, per field, the value used, the convention and the
    keyword that overrides it (the field's name), so the caller can settle it.
    """
    guessed = spec.guessed_fields()
    if not guessed:
        return []
    lines = "\n".join(
        f"  - {name}={getattr(spec, name)!r}: {spec.provenance_of(name).detail}; "
        f"override with clipkit.load(..., {name}=...)"
        for name in guessed
    )
    warnings.warn(
        AssumptionWarning(
            f"{source}: no config file beside the weights and no official release settles "
            f"{len(guessed)} field(s) the shapes cannot show; clipkit assumed:\n{lines}\n"
            "If these are not how the weights were trained, the embeddings will be wrong.",
            fields=guessed,
        ),
        stacklevel=stacklevel,
    )
    return guessed
