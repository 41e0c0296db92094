"""Fixtures shared by the whole suite: an isolated cache, and a plugin registry restored after each test."""

from __future__ import annotations

import pytest

import clipkit.plugins


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point the default cache at a fresh directory, so no test reads or writes ~/.cache/clip."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CLIPKIT_CACHE", str(cache))
    monkeypatch.delenv("CLIPKIT_OFFLINE", raising=False)
    return cache


@pytest.fixture
def registry():
    """A fresh process-wide plugin registry; whatever a test registers is gone afterwards."""
    fresh = clipkit.plugins.reload_plugins()
    yield fresh
    clipkit.plugins.reload_plugins()
