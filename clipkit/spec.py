"""Plain data that crosses module boundaries: ``ArchSpec``, ``Provenance`` and ``ModelSource``.

An ``ArchSpec`` is everything a plugin needs to build a model and its transform,
inferred from a checkpoint without building anything. Plugins subclass it with
their own fields; every spec is an attrs frozen class, so it is hashable,
comparable, and its ``repr`` is valid Python that rebuilds it.

Provenance (no silent guesses): each spec carries ``spec.provenance``, a
read-only mapping from field name to a ``Provenance`` saying where the value
came from: ``SHAPES`` (read off a tensor's shape), ``CONFIG`` (a config file
beside the weights), ``RELEASE`` (the official release table), ``CONVENTION``
(a default the plugin assumed) or ``CALLER`` (a ``clipkit.load`` keyword).
Precedence: caller > config > release > convention; a value read off the
shapes cannot be contradicted. A detecting plugin records a ``Provenance`` for
every field it sets (``spec.with_values(...)`` or the ``provenance=`` argument);
``clipkit.load`` warns once (``clipkit.errors.AssumptionWarning``) about every
field still marked ``CONVENTION``, unless the file is a known official release.
Provenance is metadata: it is not part of equality, hashing or ``repr``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from clipkit.errors import ConfigurationError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# -- validators for spec fields (attrs' ``validator=``), for built-in and plugin specs alike -------------


def positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: the field is an ``int`` (not a ``bool``) above zero; else ``ConfigurationError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a positive int, got {value!r}"
        )


_positive = positive_int  # the name plugins written against clipkit 0.1 imported


def heads_divide(width_field: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    """Validator factory for a head count: a positive int that divides the spec's ``width_field``.

    Declare the width field first (attrs validates in declaration order).
    """

    def check(instance: Any, attribute: attrs.Attribute, heads: Any) -> None:
        positive_int(instance, attribute, heads)
        width = getattr(instance, width_field)
        if width % heads:
            raise ConfigurationError(
                f"{type(instance).__name__}.{attribute.name}={heads} does not divide "
                f"{width_field}={width}; choose a head count that divides the width"
            )

    return check


def epsilon(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: a number strictly between 0 and 1 (a normalisation epsilon); else ``ConfigurationError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a small positive number, got {value!r}"
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
    if len(sides) != (2 if isinstance(value, tuple) else 1) or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in sides):
        raise ConfigurationError(
            f"{type(instance).__name__}.{attribute.name} must be a positive int or a (height, width) pair "
            f"of positive ints, got {value!r}"
        )


SHAPES = "shapes"
CONFIG = "config"
RELEASE = "release"
CONVENTION = "convention"
CALLER = "caller"
UNUSED = "unused"
UNSETTLED = "unsettled"
UNRECORDED = "unrecorded"

#: every provenance source, strongest first (``SHAPES`` is a fact: nothing may contradict it);
#: ``UNUSED``: the value does not affect this model (an eos id when pooling at the highest id)
#: ``UNSETTLED``: the shapes allow several values and nothing may be assumed (a non-square ViT grid); a config or
#: the caller's keyword must settle it, else ``clipkit.load`` refuses (``clipkit.provenance.require_settled``)
SOURCES: tuple[str, ...] = (SHAPES, CALLER, CONFIG, RELEASE, CONVENTION, UNUSED, UNSETTLED, UNRECORDED)


@attrs.frozen
class Provenance:
    """Where one spec field's value came from: a ``source`` (one of ``SOURCES``) and a human-readable ``detail``.

    ``detail`` says what exactly: the tensor read (``"visual.conv1.weight"``),
    the file and key (``"/m/open_clip_config.json: model_cfg.quick_gelu"``), the
    release (``"ViT-B/32"``) or the convention (``"OpenAI's 64-wide heads"``).
    Build them with the class methods: ``Provenance.shapes(key)``,
    ``.config(file, key)``, ``.release(name)``, ``.convention(why)``, ``.caller()``.
    """

    source: str = attrs.field(validator=attrs.validators.in_(SOURCES))
    detail: str = ""

    @classmethod
    def shapes(cls, key: str) -> Provenance:
        """Read off the shape (or presence) of tensor ``key``."""
        return cls(SHAPES, key)

    @classmethod
    def config(cls, file: Any, key: str) -> Provenance:
        """Read from config ``file`` (a path or name) at ``key`` (e.g. ``model_cfg.vision_cfg.head_width``)."""
        return cls(CONFIG, f"{file}: {key}")

    @classmethod
    def release(cls, name: str) -> Provenance:
        """Taken from the official release table entry ``name``."""
        return cls(RELEASE, name)

    @classmethod
    def convention(cls, why: str) -> Provenance:
        """Assumed: ``why`` names the convention (``clipkit.load`` warns about these)."""
        return cls(CONVENTION, why)

    @classmethod
    def unused(cls, why: str) -> Provenance:
        """The value does not affect this model: ``why`` says so."""
        return cls(UNUSED, why)

    @classmethod
    def unsettled(cls, why: str) -> Provenance:
        """The shapes allow several values: ``why`` says which, and what settles it (``clipkit.load`` refuses it)."""
        return cls(UNSETTLED, why)

    @classmethod
    def caller(cls) -> Provenance:
        """Given as a ``clipkit.load`` keyword."""
        return cls(CALLER, "clipkit.load keyword")

    def __str__(self) -> str:
        return f"{self.source} ({self.detail})" if self.detail else self.source


class ProvenanceMap(Mapping[str, Provenance]):
    """A read-only ``{field name: Provenance}`` mapping (picklable, unlike ``MappingProxyType``)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Provenance] | None = None) -> None:
        object.__setattr__(self, "_items", dict(items or {}))

    def __getitem__(self, key: str) -> Provenance:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ProvenanceMap({self._items!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ProvenanceMap, (self._items,))


#: OpenAI's normalisation constants (the default preprocessing of every spec)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear", "nearest")
RESIZE_MODES: tuple[str, ...] = ("shortest", "longest", "squash")

#: the preprocessing fields every spec has (``clipkit.load`` warns about them like any other guessed field)
PREPROCESS_FIELDS: tuple[str, ...] = ("image_mean", "image_std", "interpolation", "resize_mode", "fill_color", "resize_to")


def preprocessing_conventions(why: str) -> dict[str, Provenance]:
    """Provenance for a spec that keeps the default preprocessing: mean, std, filter and resize mode assumed (``why``).

    ``fill_color`` and ``resize_to`` are marked unused (shortest-side resizing
    to ``image_resolution`` neither pads nor resizes elsewhere). Merge it into
    the ``provenance=`` a detector passes.
    """
    assumed = {name: Provenance.convention(why) for name in ("image_mean", "image_std", "interpolation", "resize_mode")}
    return {**assumed, "fill_color": Provenance.unused("only padding (resize_mode 'longest') uses it"),
            "resize_to": Provenance.unused("the shortest side is resized to image_resolution")}


#: the smallest normalisation std accepted: below it the division overflows float32 or amplifies rounding noise
MIN_STD = 1e-6
_FLOAT32_MAX = 3.4028234663852886e38


def _three_floats(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    name = f"{type(instance).__name__}.{attribute.name}"
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigurationError(f"{name} must be three numbers (R, G, B) or one for all three, got {value!r}")
    if not all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in value):
        raise ConfigurationError(f"{name} must be finite numbers a float32 can hold (no NaN or infinity), got {value!r}")
    if attribute.name == "image_std" and not all(v >= MIN_STD for v in value):
        raise ConfigurationError(f"{name} must be at least {MIN_STD} (a positive scale), got {value!r}")


def _floats(value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    return tuple(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value)


def _choice(choices: tuple[str, ...]) -> Any:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ConfigurationError(f"{type(instance).__name__}.{attribute.name} must be one of {choices}, got {value!r}")

    return check


def _optional_positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        positive_int(instance, attribute, value)


def _fill(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ConfigurationError(f"{type(instance).__name__}.fill_color must be an int 0..255, got {value!r}")


def _to_provenance_map(value: Mapping[str, Provenance] | None) -> ProvenanceMap:
    if isinstance(value, ProvenanceMap):
        return value
    items = dict(value or {})
    for name, entry in items.items():
        if not isinstance(entry, Provenance):
            raise ConfigurationError(f"provenance of {name!r} must be a clipkit.spec.Provenance, got {entry!r}")
    return ProvenanceMap(items)


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
    #: preprocessing: normalisation, resampling filter, how the image is fitted to the square
    #: (``shortest`` side resized then center crop; ``longest`` side resized then padded with
    #: ``fill_color``; ``squash``: resized to the square), and ``resize_to``, the side the shortest
    #: edge is resized to before the crop when it differs from ``image_resolution``
    image_mean: tuple[float, ...] = attrs.field(default=CLIP_MEAN, converter=_floats, validator=_three_floats)
    image_std: tuple[float, ...] = attrs.field(default=CLIP_STD, converter=_floats, validator=_three_floats)
    interpolation: str = attrs.field(default="bicubic", validator=_choice(INTERPOLATIONS))
    resize_mode: str = attrs.field(default="shortest", validator=_choice(RESIZE_MODES))
    fill_color: int = attrs.field(default=0, validator=_fill)
    resize_to: int | None = attrs.field(default=None, validator=_optional_positive)
    #: where each field's value came from (see the module docstring); not part of equality or repr
    provenance: ProvenanceMap = attrs.field(
        factory=ProvenanceMap, converter=_to_provenance_map, eq=False, repr=False, kw_only=True
    )

    def to_dict(self) -> dict[str, Any]:
        """Return the spec's fields as a plain dict (tuples stay tuples), for printing and JSON; provenance excluded."""
        return {field.name: getattr(self, field.name) for field in attrs.fields(type(self)) if field.name != "provenance"}

    def provenance_of(self, name: str) -> Provenance:
        """Where field ``name``'s value came from (``UNRECORDED`` when the plugin did not say)."""
        return self.provenance.get(name, Provenance(UNRECORDED))

    def with_values(self, values: Mapping[str, Any], provenance: Provenance | Mapping[str, Provenance]) -> ArchSpec:
        """A copy with ``values`` set (validated by the class) and their provenance recorded.

        ``provenance`` is one ``Provenance`` for every value, or one per field name.
        Checking precedence and shapes is the caller's job (see ``clipkit.provenance``).
        """
        if isinstance(provenance, Provenance):
            provenance = {name: provenance for name in values}
        merged = {**self.provenance, **{name: provenance[name] for name in values}}
        return attrs.evolve(self, **values, provenance=merged)

    def guessed_fields(self) -> list[str]:
        """The fields whose value is a convention default (``CONVENTION``), in field order."""
        return [name for name in self.to_dict() if self.provenance_of(name).source == CONVENTION]


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
    ``architecture`` is the release table entry: the spec's ``family`` and field
    values as published (``{"family": "vit", "vision_heads": 12, ...}``). When a
    file is known to be this release (loaded by this name, or its SHA-256 is
    ``sha256``), it settles the fields the shapes cannot show (provenance
    ``RELEASE``) instead of a convention default.
    """

    url: str
    sha256: str | None = attrs.field(default=None, converter=check_sha256)
    description: str = ""
    alternates: tuple[AlternateSource, ...] = attrs.field(default=(), converter=_alternates)
    architecture: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, eq=False, hash=False)
