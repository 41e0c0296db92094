"""Checking a file in the Hugging Face cache against the digest the Hub advertised for it.

``huggingface_hub`` names each cached blob by the ETag the Hub sent: an LFS
file's SHA-256 (``X-Linked-Etag``), a small file's git blob id; the snapshot
folder links each file to its blob. That name is the expected digest. A blob
verified once gets a record (``clipkit.fetching.VerifiedRecord``) in clipkit's
cache, so it is not hashed again until it changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

import attrs

from clipkit.errors import ChecksumError, FetchError
from clipkit.fetching.hubref import HubRef

RECORD_DIR = "hf-blobs"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_OID = re.compile(r"^[0-9a-f]{40}$")



def _git_blob_id(path: Path) -> str:
    hasher = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _record_path(records: Path | None, blob: Path) -> Path | None:
    return None if records is None else records / f"{blob.name}.json"


def _recorded(records: Path | None, blob: Path) -> bool:
    from clipkit.fetching import VerifiedRecord

    path = _record_path(records, blob)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path else None
        record = VerifiedRecord(**{k: data[k] for k in ("sha256", "size", "mtime_ns", "ctime_ns", "inode", "source")})
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return record.sha256 == blob.name and record.matches(blob)


def _remember(records: Path | None, blob: Path, source: str) -> None:
    from clipkit.fetching import VerifiedRecord

    path = _record_path(records, blob)
    if path is None:
        return
    with contextlib.suppress(OSError):  # best effort: without a record the blob is hashed again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(attrs.asdict(VerifiedRecord.of(blob, blob.name, source))), encoding="utf-8")
        os.replace(tmp, path)


def advertised_digest(snapshot_file: Path) -> str | None:
    """The digest the Hub advertised for a cached file: the name of the blob its snapshot link points to."""
    if not snapshot_file.is_symlink():
        return None
    name = Path(os.readlink(snapshot_file)).name
    return name if _SHA256.match(name) or _GIT_OID.match(name) else None


def verify_hub_file(snapshot_file: Path, ref: HubRef, *, listed_sha256: str | None = None,
                    records: Path | None = None) -> Path:
    """Check a cached Hub file against the digest the Hub advertised for it; return it, or remove it and raise.

    The expected digest is the blob's name (an LFS file's SHA-256, a small
    file's git blob id) and, for an LFS file, the SHA-256 the repo listing gave
    (``listed_sha256``) must be the same. A file that cannot be checked (a cache
    without symlinks) raises ``FetchError``; a mismatch deletes the blob and its
    snapshot link and raises ``ChecksumError``.
    """
    name = snapshot_file.name
    expected = advertised_digest(snapshot_file)
    if expected is None:
        raise FetchError(
            f"{ref}: cannot verify {snapshot_file}: it is not a link to a blob named by its digest (a Hugging Face "
            f"cache without symlinks); set HF_HUB_CACHE to a cache on a file system with symlinks",
            source=str(ref),
        )
    blob = snapshot_file.resolve()
    if listed_sha256 is not None and _SHA256.match(expected) and listed_sha256 != expected:
        _discard(snapshot_file, blob)
        raise ChecksumError(
            f"{ref}: the Hub advertised two digests for {name}: {listed_sha256} in the repo listing and {expected} "
            f"when it was downloaded; the download was removed from the Hugging Face cache, try again",
            source=str(ref), expected=listed_sha256, actual=expected,
        )
    if _recorded(records, blob):
        return snapshot_file
    from clipkit.fetching import sha256_file

    actual = sha256_file(blob) if _SHA256.match(expected) else _git_blob_id(blob)
    if actual != expected:
        _discard(snapshot_file, blob)
        kind = "SHA-256" if _SHA256.match(expected) else "git blob id"
        raise ChecksumError(
            f"{kind} mismatch for {name} of {ref}: the Hub advertised {expected}, the bytes give {actual}. The file "
            f"was removed from the Hugging Face cache ({blob}); fetch again, or check HF_ENDPOINT and any proxy.",
            source=str(ref), expected=expected, actual=actual,
        )
    _remember(records, blob, str(ref))
    return snapshot_file


def _discard(snapshot_file: Path, blob: Path) -> None:
    for path in (blob, snapshot_file):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


__all__ = ["RECORD_DIR", "advertised_digest", "verify_hub_file"]
