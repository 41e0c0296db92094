"""Hashing files and checking them against an expected SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from clipkit.errors import CheckpointNotFoundError, ChecksumError
from clipkit.spec import check_sha256

HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The lower-case hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])
    return hasher.hexdigest()


def checksum_error(source: str, expected: str, actual: str, what: str) -> ChecksumError:
    return ChecksumError(
        f"SHA-256 mismatch for {source}: expected {expected}, got {actual}. {what}",
        source=source, expected=expected, actual=actual,
    )


def verify_file(path: str | os.PathLike[str], sha256: str, source: str | None = None) -> Path:
    """Check that the local file ``path`` hashes to ``sha256`` and return it as a ``Path``.

    For the user's own files (plain paths, ``file://``): the whole file is
    hashed every time and, on a mismatch, ``ChecksumError`` is raised naming
    ``source`` (default: the path) and both digests; the file is never touched.
    Raises ``ConfigurationError`` for a malformed digest and
    ``CheckpointNotFoundError`` when the file does not exist.
    """
    expected = check_sha256(sha256, what="sha256")
    path = Path(path)
    label = source or str(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    assert expected is not None
    actual = sha256_file(path)
    if actual != expected:
        raise checksum_error(label, expected, actual,
                              f"The file {path} is left as it is; check the digest you gave, or the file.")
    return path
