"""The spec an export describes: the caller's, or the one ``clipkit.load`` attached to the model."""

from __future__ import annotations

from typing import Any

from torch import nn

from clipkit.errors import ExportError
from clipkit.spec import ArchSpec


def model_spec(model: nn.Module, spec: ArchSpec | None = None) -> ArchSpec:
    """``spec`` if given, else ``model.clipkit_spec`` (set by ``clipkit.load``); ``ExportError`` if neither exists."""
    found: Any = spec if spec is not None else getattr(model, "clipkit_spec", None)
    if not isinstance(found, ArchSpec):
        raise ExportError(
            f"this {type(model).__name__} carries no clipkit spec (clipkit.load attaches one as model.clipkit_spec); "
            "pass spec= (e.g. clipkit.inspect(source))"
        )
    return found
