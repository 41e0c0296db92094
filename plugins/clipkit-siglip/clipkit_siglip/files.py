"""Reading the JSON files transformers saves beside the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipkit.errors import CheckpointError

__all__ = ["read_json"]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if there is no such file (or it holds no object).

    A file that is not JSON raises ``CheckpointError`` naming it.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    return data if isinstance(data, dict) else None
