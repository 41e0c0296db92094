"""Lay out a Hugging Face cache on disk, as ``huggingface_hub`` writes it, for offline tests.

``write_hf_cache(cache, "timm/tiny.openai", {"open_clip_model.safetensors": data, ...})``
creates::

    <cache>/models--timm--tiny.openai/
        blobs/<sha256 for LFS files | git blob id for small files>
        snapshots/<commit>/<file> -> ../../blobs/<id>
        refs/<revision>                      (holds <commit>)

which is what ``hf_hub_download`` leaves behind (blob names are the ETags the
Hub sent: an LFS file's SHA-256, a small file's git blob id), so
``hf_hub_download(..., local_files_only=True)`` and ``snapshot_download`` find
it. No tree listing is written, as for files fetched one by one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hub_server import LFS_SUFFIXES, git_blob_id


def repo_folder(cache: str | os.PathLike[str], repo_id: str) -> Path:
    """The cache folder of a model repo: ``models--<org>--<name>``."""
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def write_hf_cache(cache: str | os.PathLike[str], repo_id: str, files: dict[str, bytes], *,
                   revision: str = "main", commit: str | None = None) -> Path:
    """Write ``files`` as one cached commit of ``repo_id`` (``revision`` pointing at it); return the snapshot folder."""
    folder = repo_folder(cache, repo_id)
    listing = "\n".join(f"{name} {git_blob_id(data)}" for name, data in sorted(files.items()))
    commit = commit or hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    for name, data in files.items():
        blob_name = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_id(data)
        blob = folder / "blobs" / blob_name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = snapshot / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    return snapshot


def open_clip_config(config: Any, *, quick_gelu: bool = True) -> bytes:
    """``open_clip_config.json`` as open_clip publishes it beside the weights, for a ``factories.CLIPConfig`` ViT."""
    return json.dumps({
        "model_cfg": {
            "embed_dim": config.embed_dim, "quick_gelu": quick_gelu,
            "vision_cfg": {"image_size": config.image_resolution, "layers": config.vision_layers,
                           "width": config.vision_width, "patch_size": config.vision_patch_size},
            "text_cfg": {"context_length": config.context_length, "vocab_size": config.vocab_size,
                         "width": config.text_width, "heads": config.text_heads, "layers": config.text_layers},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }).encode()
