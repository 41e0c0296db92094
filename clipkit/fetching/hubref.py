"""Hub sources as written by the caller: ``hf-hub:<org>/<repo>[@revision]`` and ``hf://<org>/<repo>[@revision]/<file>``."""

from __future__ import annotations

import re
import urllib.parse

import attrs

from clipkit.errors import ConfigurationError

HUB_PREFIX = "hf-hub:"
HF_SCHEME = "hf://"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@attrs.frozen
class HubRef:
    """A parsed Hub source: the repo, the revision asked for (``None``: ``main``), and one file (``hf://``) or ``None``."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        if self.filename is None:
            return f"{HUB_PREFIX}{self.repo_id}{at}"
        return f"{HF_SCHEME}{self.repo_id}{at}/{self.filename}"


def is_hub_source(source: str) -> bool:
    """Whether ``source`` is spelled as a Hub source (``hf-hub:...`` or ``hf://...``)."""
    return source.startswith(HUB_PREFIX) or source.startswith(HF_SCHEME)


def parse_hub_source(source: str) -> HubRef:
    """Split ``hf-hub:<org>/<repo>[@rev]`` or ``hf://<org>/<repo>[@rev]/<file>`` into a ``HubRef``.

    In ``hf://`` URLs a revision holding ``/`` is written URL-encoded
    (``@refs%2Fpr%2F1``), as ``huggingface_hub``'s own ``HfFileSystem`` spells
    it. Raises ``ConfigurationError`` naming what is wrong with a malformed one.
    """
    if source.startswith(HUB_PREFIX):
        body, _, revision = source[len(HUB_PREFIX):].partition("@")
        repo_id, filename = body.strip("/"), None
        revision = revision or None
    elif source.startswith(HF_SCHEME):
        rest = source[len(HF_SCHEME):]
        if rest.split("/", 1)[0] in ("datasets", "spaces", "buckets"):
            raise ConfigurationError(f"{source!r} is not a model repo; clipkit loads checkpoints from model repos only")
        parts = rest.split("/", 2)
        if len(parts) < 3 or not parts[2]:
            raise ConfigurationError(
                f"{source!r} names no file; write hf://<org>/<repo>[@revision]/<file>, or hf-hub:<org>/<repo> "
                f"to load the checkpoint a repo holds"
            )
        name, _, revision = parts[1].partition("@")
        repo_id, filename = f"{parts[0]}/{name}", parts[2]
        revision = urllib.parse.unquote(revision) or None
    else:
        raise ConfigurationError(f"{source!r} is not a Hub source (hf-hub:<org>/<repo> or hf://<org>/<repo>/<file>)")
    if not _REPO_ID.match(repo_id):
        raise ConfigurationError(
            f"{source!r} does not name a repo as <org>/<name> (got {repo_id!r}); e.g. "
            f"hf-hub:timm/vit_base_patch32_clip_224.openai"
        )
    if filename is not None and (filename.startswith("/") or ".." in filename.split("/")):
        raise ConfigurationError(f"{source!r}: the file path {filename!r} must stay inside the repo")
    return HubRef(repo_id, revision, filename)


__all__ = ["HF_SCHEME", "HUB_PREFIX", "HubRef", "is_hub_source", "parse_hub_source"]
