"""clipkit's version, read once from the installed package's metadata (pyproject.toml in a bare source tree)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

__all__ = ["__version__"]


def _read_version() -> str:
    try:
        return metadata.version("clipkit")
    except metadata.PackageNotFoundError:
        pass
    try:  # a source tree that was never installed: the version pyproject.toml declares
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.M)
    return match[1] if match else "0+unknown"


__version__: str = _read_version()
