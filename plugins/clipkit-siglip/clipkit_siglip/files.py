"""Reading the JSON files transformers saves beside the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipkit import limits

__all__ = ["read_json"]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if there is no such file (or it holds no object).

    A file that is not JSON, or is larger or more deeply nested than
    ``clipkit.limits`` allows, raises ``CheckpointError`` naming it.
    """
    if not path.is_file():
        return None
    data = limits.read_json(path)
    return data if isinstance(data, dict) else None
