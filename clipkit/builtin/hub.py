"""Fetches Hugging Face Hub sources (``hf-hub:<org>/<repo>[@rev]``, ``hf://<org>/<repo>[@rev]/<file>``).

A thin ``fetch_checkpoint`` implementation: the work (choosing the files,
downloading through ``huggingface_hub`` into its cache, verifying each file
against the digest the Hub advertised, offline mode) is ``clipkit.fetching.hub``.
Needs the optional extra ``clipkit[hub]``; without it a Hub source raises
``ConfigurationError`` naming the extra, and every other source is unaffected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipkit.fetching import hub
from clipkit.hookspecs import hookimpl


@hookimpl
def fetch_checkpoint(
    source: str, cache_dir: Path, sha256: str | None, storage_options: Mapping[str, Any] | None
) -> Path | None:
    """Fetch ``hf-hub:`` and ``hf://`` sources through the Hugging Face cache; ``None`` for any other source."""
    if not hub.is_hub_source(source):
        return None
    return hub.fetch_hub(source, sha256=sha256, records=Path(cache_dir).expanduser() / ".clipkit" / hub.RECORD_DIR)
