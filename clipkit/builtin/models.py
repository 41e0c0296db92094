"""Registers the nine official OpenAI CLIP releases by name (URL and SHA-256, no code)."""

from __future__ import annotations

from clipkit.hookspecs import hookimpl
from clipkit.releases import OFFICIAL_FILES, OFFICIAL_RELEASES, official_url
from clipkit.spec import ModelSource

__all__ = ["OFFICIAL_FILES", "OFFICIAL_MODELS", "register_models"]

OFFICIAL_MODELS: dict[str, ModelSource] = {
    name: ModelSource(url=official_url(name), sha256=digest, description="OpenAI CLIP (TorchScript release)")
    for name, (digest, _) in OFFICIAL_RELEASES.items()
}


@hookimpl
def register_models() -> dict[str, ModelSource]:
    """Offer the official release names, in the reference's order."""
    return dict(OFFICIAL_MODELS)
