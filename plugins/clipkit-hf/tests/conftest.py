"""Make ``clipkit_hf`` importable from a plain checkout, and register it for the tests that load through clipkit.

In CI the distribution is installed (``pip install -e plugins/clipkit-hf``) and
clipkit registers it through its entry point; run from a checkout without
installing, the package directory is put on ``sys.path`` and the
``hf_registered`` fixture registers the plugin at run time instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    import clipkit_hf  # noqa: F401
except ImportError:  # not installed: use the source next to these tests
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clipkit_hf.plugin
from clipkit.testing import plugin_registered


@pytest.fixture
def hf_registered():
    """The process-wide registry with the plugin in it (through its entry point, or registered for this test)."""
    with plugin_registered(clipkit_hf.plugin, "hf") as registry:
        yield registry
