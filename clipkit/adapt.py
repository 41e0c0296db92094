"""Load-time adaptation: another input size or text length, and one tower only.

Two steps of ``clipkit.load``, each asking the plugins (the core never names a
family):

- ``resize``: the spec at the caller's ``image_resolution`` /
  ``context_length``, and the state dict made to fit it by the
  ``adapt_state_dict`` hook (positional embeddings resized, nothing else read);
- ``one_tower``: the model cut to one tower by the ``select_tower`` hook, and
  the state dict narrowed to that tower's entries, so the other tower's
  tensors are never read from the (memory-mapped) file nor allocated.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from clipkit.errors import ConfigurationError, ResizeError, StateDictError, TowerError
from clipkit.nn import TOWERS
from clipkit.plugins import PluginRegistry, get_registry
from clipkit.spec import UNSETTLED, ArchSpec, Provenance

__all__ = ["check_sizes", "one_tower", "resize", "target_spec"]


def _side(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        return None
    return int(value)


def check_sizes(
    image_resolution: Any = None, context_length: Any = None
) -> tuple[int | tuple[int, int] | None, int | None]:
    """The caller's ``image_resolution`` and ``context_length`` checked and normalised, as ``clipkit.load`` takes them.

    ``image_resolution`` is ``None``, a positive int or a ``(height, width)``
    pair (tuple or list) of positive ints; ``context_length`` ``None`` or a
    positive int (bools, floats, strings and nested values are refused).
    Returns them as ints and a tuple; raises ``ConfigurationError`` naming the
    value otherwise.
    """
    resolution: int | tuple[int, int] | None = None
    if image_resolution is not None:
        sides = image_resolution if isinstance(image_resolution, (tuple, list)) else None
        if sides is None:
            resolution = _side(image_resolution)
        elif len(sides) == 2 and None not in (checked := (_side(sides[0]), _side(sides[1]))):
            resolution = checked  # type: ignore[assignment]
        if resolution is None:
            raise ConfigurationError(
                f"image_resolution must be a positive int or a (height, width) pair of positive ints, "
                f"got {image_resolution!r}"
            )
    length = None if context_length is None else _side(context_length)
    if context_length is not None and length is None:
        raise ConfigurationError(f"context_length must be a positive int, got {context_length!r}")
    return resolution, length


def target_spec(
    spec: ArchSpec, *, image_resolution: int | tuple[int, int] | None = None, context_length: int | None = None
) -> ArchSpec:
    """``spec`` with the caller's ``image_resolution`` and ``context_length`` (``None``: keep the checkpoint's).

    The new values are recorded as the caller's (``Provenance.caller()``).

    Raises ``ResizeError`` when the spec has no ``context_length`` field (a
    family without a text length to change) and ``ConfigurationError`` for
    values the spec class rejects.
    """
    changes: dict[str, Any] = {}
    if image_resolution is not None:
        changes["image_resolution"] = tuple(image_resolution) if isinstance(image_resolution, list) else image_resolution
    if context_length is not None:
        if "context_length" not in attrs.fields_dict(type(spec)):
            raise ResizeError(
                f"family {spec.family!r} ({type(spec).__name__}) has no context_length to change; "
                "load it without context_length="
            )
        changes["context_length"] = context_length
    if not changes:
        return spec
    return spec.with_values(changes, Provenance.caller())


def resize(
    state_dict: Mapping[str, torch.Tensor],
    spec: ArchSpec,
    *,
    image_resolution: int | tuple[int, int] | None = None,
    context_length: int | None = None,
    tower: str | None = None,
    registry: PluginRegistry | None = None,
) -> tuple[ArchSpec, Mapping[str, torch.Tensor]]:
    """Return ``(target spec, state dict fitting it)`` for the caller's size; unchanged when nothing changes.

    The ``adapt_state_dict`` hook of the spec's family resizes the tensors.
    Raises ``ResizeError`` when no plugin can resize the family, or the family
    cannot run at that size, and ``ConfigurationError`` for a size of the tower
    that ``tower`` leaves out.
    """
    if (tower == "text" and image_resolution is not None) or (tower == "image" and context_length is not None):
        asked = "image_resolution" if tower == "text" else "context_length"
        raise ConfigurationError(f"{asked}= concerns the tower that tower={tower!r} leaves out; drop one of them")
    target = target_spec(spec, image_resolution=image_resolution, context_length=context_length)
    if target == spec:  # the same size; a caller's value still settles a size the shapes left open
        return (target if spec.provenance_of("image_resolution").source == UNSETTLED else spec), state_dict
    registry = registry or get_registry()
    adapted = registry.call_first("adapt_state_dict", returns=(Mapping, "a mapping of tensors"),
                                  state_dict=state_dict, spec=spec, target=target)
    if adapted is None:
        raise ResizeError(
            f"family {spec.family!r} ({type(spec).__name__}) cannot be resized: no plugin implements "
            f"adapt_state_dict for it (asked: {', '.join(registry.plugin_names('adapt_state_dict'))}); "
            "load it at its own image_resolution and context_length"
        )
    return target, adapted


def one_tower(
    model: torch.nn.Module,
    spec: ArchSpec,
    tower: str,
    state_dict: Mapping[str, torch.Tensor],
    *,
    registry: PluginRegistry | None = None,
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Cut ``tower`` out of ``model`` (built on the meta device) and keep only its entries of ``state_dict``.

    The entries left out must be the full model's other-tower tensors with the
    shapes it expects (checked from shapes alone, nothing read); anything else
    stays in, so strict loading names it. Raises ``TowerError`` when no plugin
    can cut the model, ``StateDictError`` when a left-out entry does not fit.
    """
    if tower not in TOWERS:
        raise ConfigurationError(f"tower must be one of {', '.join(map(repr, TOWERS))}, got {tower!r}")
    registry = registry or get_registry()
    part = registry.call_first("select_tower", returns=(torch.nn.Module, "an nn.Module"), model=model, spec=spec,
                               tower=tower)
    if part is None:
        raise TowerError(
            f"family {spec.family!r} ({type(spec).__name__}) cannot be loaded one tower at a time: no plugin "
            f"implements select_tower for its {type(model).__name__} model; load the whole model"
        )
    kept_keys = set(part.state_dict(keep_vars=True))
    full = model.state_dict(keep_vars=True)
    kept: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in state_dict.items():
        if key in kept_keys or key not in full:
            kept[key] = value
        elif tuple(value.shape) != tuple(full[key].shape):
            mismatched.append((key, tuple(full[key].shape), tuple(value.shape)))
    if mismatched:
        raise StateDictError(
            "the checkpoint does not fit the architecture detected from it; wrong shapes: "
            + ", ".join(f"{k} (model {list(a)}, checkpoint {list(b)})" for k, a, b in mismatched),
            mismatched=mismatched,
        )
    return part, kept
