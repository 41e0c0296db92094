"""The reference implementations the tests compare against, imported the same way everywhere.

``open_clip`` (open-clip-torch 3.3) is the primary numerical oracle; OpenAI's
own ``clip`` package (openai-clip 1.0.1) is the second. The latter imports
``pkg_resources`` only for ``packaging``, which current setuptools no longer
ships; a stand-in module that offers exactly that is installed when needed.
"""

from __future__ import annotations

import importlib
import sys
import types


def openai_clip() -> types.ModuleType:
    """Import and return OpenAI's ``clip`` package (``clip.load``, ``clip.model.build_model``, ``clip.clip._transform``)."""
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.packaging = types.SimpleNamespace(version=packaging.version)  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    return importlib.import_module("clip")


def open_clip() -> types.ModuleType:
    """Import and return ``open_clip`` (its ``model.build_model_from_openai_state_dict`` is the oracle)."""
    return importlib.import_module("open_clip")
