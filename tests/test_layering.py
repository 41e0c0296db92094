"""clipkit's imports only go down the floors: nn and errors at the bottom, the pipeline and front ends on top.

Every ``import`` in ``clipkit/`` (module level, inside functions, under
``TYPE_CHECKING``) is read with ``ast``; an import from a module on a lower
floor of one on a higher floor fails the test, naming the file and line. Imports
within one floor are allowed. A new module must be given a floor in ``FLOORS``.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clipkit"

#: The floors, lowest first: module-name patterns (``fnmatch``), each module on exactly one floor.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bottom: errors, version, pure torch modules", (
        "clipkit.errors", "clipkit.version", "clipkit.nn", "clipkit.nn.*",
    )),
    ("plain data and shared checks", (
        "clipkit.spec", "clipkit.shapes", "clipkit.releases", "clipkit.limits", "clipkit.inputs", "clipkit.provenance",
        "clipkit.placement", "clipkit.folder",
    )),
    ("file readers and fetching", (
        "clipkit.layouts", "clipkit.pickle_scan", "clipkit.pickle_values", "clipkit.unpickling", "clipkit.torchfile",
        "clipkit.zipstore",
        "clipkit.archive", "clipkit.checkpoint", "clipkit.jit", "clipkit.tokenizer",
        "clipkit.fetching", "clipkit.fetching.*", "clipkit.digests",
    )),
    ("hook declarations", (
        "clipkit.hookspecs",
    )),
    ("built-in plugins", (
        "clipkit.builtin", "clipkit.builtin.*",
    )),
    ("plugin framework", (
        "clipkit.plugins",
    )),
    ("pipeline and front ends", (
        "clipkit", "clipkit.__main__", "clipkit.loader", "clipkit.resolve", "clipkit.adapt", "clipkit.model_sources", "clipkit.settle",
        "clipkit.tokenizers", "clipkit.cli", "clipkit.cli.*", "clipkit.testing", "clipkit.testing.*",
        "clipkit.batch", "clipkit.batch.*", "clipkit.export", "clipkit.export.*",
    )),
)


def module_name(path: Path, root: Path) -> str:
    """``clipkit/fetching/cache.py`` -> ``clipkit.fetching.cache``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool, known: Iterable[str]) -> list[tuple[str, int]]:
    """Every clipkit module ``source`` imports, anywhere in the file, as ``(module, line)``.

    ``from clipkit.x import y`` counts as importing ``clipkit.x.y`` when that
    is a module in ``known``, else ``clipkit.x``; relative imports are resolved
    against ``module``.
    """
    known = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.append((child if child in known else target, node.lineno))
    return [(name, line) for name, line in found if name == "clipkit" or name.startswith("clipkit.")]


def floor_of(module: str, floors: tuple[tuple[str, tuple[str, ...]], ...] = FLOORS) -> int | None:
    """The index of the floor whose patterns match ``module`` (the most specific pattern wins), or ``None``."""
    best: tuple[int, int] | None = None  # (pattern length, floor)
    for index, (_, patterns) in enumerate(floors):
        for pattern in patterns:
            if fnmatch.fnmatchcase(module, pattern) and (best is None or len(pattern) > best[0]):
                best = (len(pattern), index)
    return None if best is None else best[1]


def climbing_imports(
    graph: Mapping[str, list[tuple[str, int]]], floors: tuple[tuple[str, tuple[str, ...]], ...] = FLOORS
) -> list[str]:
    """Each import in ``graph`` (module -> imported modules with lines) that goes up a floor, as a readable line."""
    problems = []
    for module, imported in sorted(graph.items()):
        low = floor_of(module, floors)
        for target, line in imported:
            high = floor_of(target, floors)
            if low is not None and high is not None and high > low:
                problems.append(
                    f"{module} (floor {low}: {floors[low][0]}) imports {target} (floor {high}: {floors[high][0]}) "
                    f"at line {line}"
                )
    return problems


def package_graph(root: Path = PACKAGE) -> dict[str, list[tuple[str, int]]]:
    """The import graph of the package at ``root``: every module's clipkit imports."""
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    return {
        module: imports_of(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py",
                           known=files)
        for module, path in files.items()
    }


def test_every_module_has_a_floor() -> None:
    homeless = sorted(module for module in package_graph() if floor_of(module) is None)
    assert not homeless, f"give these modules a floor in FLOORS (tests/test_layering.py): {homeless}"


def test_no_import_climbs_to_a_higher_floor() -> None:
    problems = climbing_imports(package_graph())
    assert not problems, "imports that climb back up:\n" + "\n".join(problems)


# -- the checker checks: a synthetic package with one import that climbs ------------------------------


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    root = tmp_path / "clipkit"
    (root / "nn").mkdir(parents=True)
    (root / "__init__.py").write_text("from clipkit.loader import load\n")
    (root / "errors.py").write_text("")
    (root / "loader.py").write_text("from clipkit import errors\nfrom clipkit.nn import layers\n")
    (root / "nn" / "__init__.py").write_text("from .layers import Block\n")
    (root / "nn" / "layers.py").write_text(
        "from clipkit.errors import ConfigurationError\n\n\ndef block():\n    from clipkit import loader\n"
    )
    return root


def test_the_checker_finds_a_function_level_import_that_climbs(synthetic: Path) -> None:
    graph = package_graph(synthetic)
    assert graph["clipkit.nn"] == [("clipkit.nn.layers", 1)]  # relative import resolved
    assert graph["clipkit.loader"] == [("clipkit.errors", 1), ("clipkit.nn.layers", 2)]
    problems = climbing_imports(graph)
    assert len(problems) == 1
    assert problems[0].startswith("clipkit.nn.layers (floor 0: ") and "imports clipkit.loader (floor 6: " in problems[0]
    assert problems[0].endswith("at line 5")


def test_the_most_specific_pattern_places_a_module() -> None:
    floors = (("low", ("clipkit.a.b",)), ("high", ("clipkit.a", "clipkit.a.*")))
    assert floor_of("clipkit.a.b", floors) == 0
    assert floor_of("clipkit.a.c", floors) == 1
    assert floor_of("clipkit.elsewhere", floors) is None
    assert climbing_imports({"clipkit.a.b": [("clipkit.a.c", 3)], "clipkit.a.c": [("clipkit.a.b", 4)]}, floors) == [
        "clipkit.a.b (floor 0: low) imports clipkit.a.c (floor 1: high) at line 3"
    ]
