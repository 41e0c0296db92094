"""Registers the nine official OpenAI CLIP releases by name: URL and SHA-256, then their Hub copies (data, no code).

Tests point a name at loopback servers by replacing its entry in
``OFFICIAL_MODELS`` (``attrs.evolve``) and reloading the plugins.
"""

from __future__ import annotations

from clipkit.hookspecs import hookimpl
from clipkit.releases import OFFICIAL_FILES, OFFICIAL_HUB_COPIES, OFFICIAL_RELEASES, official_url
from clipkit.spec import AlternateSource, ModelSource

__all__ = ["OFFICIAL_FILES", "OFFICIAL_MODELS", "register_models"]


def _alternates(name: str) -> tuple[AlternateSource, ...]:
    open_clip_repo, transformers_repo = OFFICIAL_HUB_COPIES[name]
    found = [AlternateSource(source=f"hf-hub:{open_clip_repo}", description="open_clip's copy on the Hugging Face Hub")]
    if transformers_repo:
        found.append(AlternateSource(source=f"hf-hub:{transformers_repo}", requires="clipkit-hf",
                                     description="transformers' copy on the Hugging Face Hub"))
    return tuple(found)


#: Each name's original URL (its SHA-256 in the path), then its copies on the Hub, in the order they are tried.
OFFICIAL_MODELS: dict[str, ModelSource] = {
    name: ModelSource(url=official_url(name), sha256=digest, alternates=_alternates(name),
                      description="OpenAI CLIP (TorchScript release)")
    for name, (digest, _) in OFFICIAL_RELEASES.items()
}


@hookimpl
def register_models() -> dict[str, ModelSource]:
    """Offer the official release names, in the reference's order."""
    return dict(OFFICIAL_MODELS)
