"""Settling a detected spec: a config file beside the weights, the caller's keywords, the official release table.

``settle`` runs right after ``detect_architecture`` (for ``clipkit.load`` and
``clipkit.inspect``) and applies the sources in precedence order (see
``clipkit.provenance``): the ``configure_spec`` plugins, then the caller's
keywords, then, only while a field is still a convention default, the release
table. A file is a known release when it was asked for by a registered name, or
when its SHA-256 is a release's: the digest is only looked for when the shapes
match a release's architecture (``matches_release``), and it comes from the
caller, the download's verified record, or the memo in the cache
(``clipkit.digests``), so loading the same file again hashes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipkit import provenance
from clipkit.errors import AmbiguousArchitectureError
from clipkit.plugins import PluginRegistry
from clipkit.spec import ArchSpec, ModelSource

__all__ = ["configure", "known_release", "settle"]


def configure(spec: ArchSpec, path: Path | None, registry: PluginRegistry) -> ArchSpec:
    """Ask every ``configure_spec`` plugin; return the one answer, or ``spec`` when none answers."""
    answers, failures = registry.call_all("configure_spec", returns=(ArchSpec, "a clipkit.ArchSpec"), spec=spec,
                                          path=path)
    if len(answers) > 1:
        names = [name for name, _ in answers]
        raise AmbiguousArchitectureError(
            f"{len(answers)} plugins read a config for these weights ({', '.join(names)}); only one may. "
            "Disable one of them with CLIPKIT_DISABLE_PLUGINS=<entry-point name>.",
            claimants=names,
        )
    if failures and not answers:
        raise failures[0]
    return answers[0][1] if answers else spec


def known_release(
    spec: ArchSpec,
    path: Path | None,
    source: str | os.PathLike[str],
    sha256: str | None,
    models: Mapping[str, ModelSource],
    cache_dir: Path,
) -> tuple[str, ModelSource] | None:
    """The official release the checkpoint is known to be (by registered name, or by digest), or ``None``.

    The file is hashed (once; memoised) only when its shapes match a release's
    architecture and no digest is known already.
    """
    text = os.fspath(source)
    if not isinstance(source, os.PathLike) and text in models and provenance.matches_release(spec, models[text]):
        return text, models[text]  # by name (a copy in another layout, another family's spec, does not match)
    candidates = [(name, entry) for name, entry in models.items()
                  if entry.sha256 and provenance.matches_release(spec, entry)]
    if not candidates or path is None or not Path(path).is_file():
        return None
    if sha256 is None:
        from clipkit.digests import file_digest

        sha256 = file_digest(path, cache_dir)
    return next(((name, entry) for name, entry in candidates if entry.sha256 == sha256), None)


def settle(
    spec: ArchSpec,
    path: Path | None,
    *,
    source: str | os.PathLike[str],
    sha256: str | None,
    overrides: Mapping[str, Any],
    models: Mapping[str, ModelSource],
    cache_dir: Path,
    registry: PluginRegistry,
) -> ArchSpec:
    """The detected ``spec`` with config, caller and release-table values applied, each recorded with its source."""
    spec = configure(spec, path, registry)
    spec = provenance.apply_overrides(spec, overrides)
    if not spec.guessed_fields():
        return spec
    release = known_release(spec, path, source, sha256, models, cache_dir)
    return provenance.apply_release(spec, *release) if release else spec
