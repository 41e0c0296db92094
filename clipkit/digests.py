"""The SHA-256 of a local checkpoint, hashed at most once per version of the file.

Recognising an official release by digest must not slow every load down, so a
digest is looked up before it is computed: a file clipkit downloaded has a
verified record beside it (``clipkit.fetching``); any other file's digest is
memoised in the cache's bookkeeping directory (``<cache>/.clipkit/digests.json``)
under its absolute path, with its size, mtime, ctime and inode, so a second
load of an unchanged file pays one ``stat``. Writing the memo is best effort: a
read-only cache only means hashing again next time.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

from clipkit.fetching import META_DIR, VerifiedRecord, read_record, sha256_file

MEMO_NAME = "digests.json"
MEMO_LIMIT = 512  # entries kept; the oldest go first


def _identity(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def memo_path(cache_dir: Path) -> Path:
    """Where digests of local files are memoised: ``<cache_dir>/.clipkit/digests.json``."""
    return Path(cache_dir) / META_DIR / MEMO_NAME


def _read_memo(memo: Path) -> dict[str, dict]:
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(memo: Path, entries: dict[str, dict]) -> None:
    tmp = memo.with_name(f"{memo.name}.{secrets.token_hex(4)}.tmp")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries), encoding="utf-8")
        os.replace(tmp, memo)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def file_digest(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> str:
    """The lower-case hex SHA-256 of the file at ``path``, from its verified record, the memo, or by hashing it once."""
    path = Path(path).resolve()
    record = read_record(path)
    if isinstance(record, VerifiedRecord) and record.sha256 and record.matches(path):
        return record.sha256
    memo = memo_path(Path(cache_dir))
    entries = _read_memo(memo)
    identity = _identity(path)
    entry = entries.get(str(path))
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in identity.items()) and entry.get("sha256"):
        return str(entry["sha256"])
    digest = sha256_file(path)
    if _identity(path) == identity:  # unchanged while it was read
        entries.pop(str(path), None)
        entries[str(path)] = {**identity, "sha256": digest}
        _write_memo(memo, dict(list(entries.items())[-MEMO_LIMIT:]))
    return digest
