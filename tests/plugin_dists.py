"""Throwaway plugin distributions for the tests: written to disk, installed by pip, seen through PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path


def write_plugin_dist(root: Path, *, name: str, version: str, entry_point: str, module: str, code: str) -> Path:
    """Write a one-module distribution ``name`` declaring ``entry_point = module`` in the ``clipkit`` group."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"

        [project.entry-points.clipkit]
        {entry_point} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    return root


def pip_install(sources: Iterable[Path], target: Path) -> Path:
    """Install the distributions in ``sources`` into ``target`` with pip (no network, no dependencies)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), *map(str, sources)],
        check=True,
        capture_output=True,
    )
    return target


def env_with(site: Path) -> dict[str, str]:
    """This process's environment with ``site`` first on ``PYTHONPATH``, for a child that should see its plugins."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
