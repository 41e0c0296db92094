"""Plain data that crosses module boundaries: ``ArchSpec`` and ``ModelSource``.

An ``ArchSpec`` is everything a plugin needs to build a model and its transform,
inferred from a checkpoint without building anything. Plugins subclass it with
their own fields; every spec is an attrs frozen class, so it is hashable,
comparable, and its ``repr`` is valid Python that rebuilds it.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from clipkit.errors import ConfigurationError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a positive int, got {value!r}"
        )


def _square_or_pair(value: Any) -> Any:
    """A list becomes a tuple, and a square ``(side, side)`` becomes ``side``: one spelling per size."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        return value[0]
    return value


def _resolution(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    sides = value if isinstance(value, tuple) else (value,)
    if len(sides) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in sides):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a positive int or a (height, width) pair "
            f"of positive ints, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class ArchSpec:
    """The architecture of one checkpoint: which family builds it and at what input size.

    ``family`` names the plugin family that understands the spec (``"vit"``,
    ``"resnet"``, or a third party's own); ``image_resolution`` is the square side
    in pixels that the image encoder expects, or a ``(height, width)`` pair for a
    non-square input (a square pair is stored as its side). Plugins subclass this with every
    hyperparameter they infer, keeping the class frozen and keyword-only.
    """

    family: str
    image_resolution: int | tuple[int, int] = attrs.field(converter=_square_or_pair, validator=_resolution)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec's fields as a plain dict (tuples stay tuples), for printing and JSON."""
        return {field.name: getattr(self, field.name) for field in attrs.fields(type(self))}


def check_sha256(digest: str | None, *, what: str = "sha256") -> str | None:
    """Return ``digest`` normalised to lower-case hex, or raise ``ConfigurationError`` if it is not 64 hex digits."""
    if digest is None:
        return None
    if not isinstance(digest, str) or not _SHA256.match(digest.strip().lower()):
        raise ConfigurationError(
            f"{what} must be 64 hexadecimal characters (a SHA-256 digest), got {digest!r}"
        )
    return digest.strip().lower()


@attrs.frozen(kw_only=True)
class AlternateSource:
    """Another place a named model's weights can come from when its own URL fails (or is not cached).

    ``source`` is anything ``clipkit.load`` accepts (a URL, ``hf-hub:<org>/<repo>[@rev]``,
    ``hf://...``); ``sha256`` the digest of its weights file where known (checked
    on top of the source's own verification); ``requires`` the distribution of the
    plugin that reads its layout (e.g. ``"clipkit-hf"``): without it installed the
    source is skipped. The copy must hold the same weights: the same model and outputs.
    """

    source: str
    sha256: str | None = attrs.field(default=None, converter=check_sha256)
    requires: str | None = None
    description: str = ""


def _alternates(value: Any) -> tuple[AlternateSource, ...]:
    items = tuple(value or ())
    for item in items:
        if not isinstance(item, AlternateSource):
            raise ConfigurationError(f"ModelSource.alternates holds AlternateSource items, got {type(item).__name__}")
    return items


@attrs.frozen(kw_only=True)
class ModelSource:
    """Where a named model's checkpoint lives: a URL and, optionally, its SHA-256 digest.

    Returned by ``register_models`` implementations. The weights are data, not code:
    nothing here says how to build the model; the checkpoint's own shapes do.
    ``alternates`` are other copies of the same weights, tried in order after
    ``url`` fails with an error that will not heal (see ``clipkit.model_sources``).
    """

    url: str
    sha256: str | None = attrs.field(default=None, converter=check_sha256)
    description: str = ""
    alternates: tuple[AlternateSource, ...] = attrs.field(default=(), converter=_alternates)
