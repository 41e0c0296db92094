"""Verified records: what clipkit checked about a cached file, so a cache hit is trusted without hashing it again."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

import attrs

from clipkit.fetching import hashing
from clipkit.fetching.cache import cache_error, lock_path, meta_dir, record_path, remove_stale_parts
from clipkit.fetching.hashing import checksum_error
from clipkit.spec import check_sha256


@attrs.frozen(kw_only=True)
class VerifiedRecord:
    """What clipkit verified about a cached file: its digest and the file's identity at that moment.

    The file is trusted without hashing while its size, mtime, ctime and inode
    are still the recorded ones; ``ctime`` cannot be set back by a program, so an
    edit that restores the mtime is still noticed.
    """

    sha256: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    source: str = ""

    @classmethod
    def of(cls, path: Path, sha256: str, source: str) -> VerifiedRecord:
        """The record for ``path`` as it is on disk now, whose content hashes to ``sha256``."""
        st = path.stat()
        return cls(sha256=sha256, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
                   inode=st.st_ino, source=source)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` is still the very file this record describes (no hashing)."""
        try:
            st = path.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (
            self.size, self.mtime_ns, self.ctime_ns, self.inode
        )


def read_record(target: Path) -> VerifiedRecord | None:
    """The verified record of cached file ``target``, or ``None`` when there is none or it is unreadable."""
    try:
        data = json.loads(record_path(target).read_text(encoding="utf-8"))
        return VerifiedRecord(
            sha256=check_sha256(data["sha256"]) or "",
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            ctime_ns=int(data["ctime_ns"]),
            inode=int(data["inode"]),
            source=str(data.get("source", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(target: Path, record: VerifiedRecord) -> None:
    """Write the record atomically; best effort: without one, the file is only hashed again next time."""
    path = record_path(target)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    payload = attrs.asdict(record)
    payload["verified_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _forget(target: Path) -> None:
    """Remove ``target`` and its record (call while holding its lock, or where no lock can be had)."""
    for path in (target, record_path(target)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise cache_error(exc, target.parent, action=f"remove {path}") from None


def forget(target: str | os.PathLike[str]) -> bool:
    """Remove the cached file ``target`` (a path ``fetch`` returned), its verified record and its leftover part files.

    For a download that turned out to be unusable (e.g. a URL without a digest
    that answered an HTML error page with status 200): the next ``fetch`` of
    that source downloads it again. It waits for the target's lock, so a
    download of the same target in another process finishes first. A file
    clipkit has no record of (a user's own file served in place, a file adopted
    from a read-only cache) is left alone; a missing file is not an error. Raises
    ``ConfigurationError`` when the cache directory does not let the file be removed. Returns whether a file
    clipkit had cached was removed.
    """
    target = Path(target)
    if not meta_dir(target).is_dir():
        return False  # nothing clipkit ever wrote is there
    import filelock  # only here: reading a record (every load of a download) must not import it

    try:
        lock = filelock.FileLock(lock_path(target))
        lock.acquire()
    except OSError as exc:
        raise cache_error(exc, target.parent, action=f"lock {lock_path(target)}") from None
    try:
        recorded = record_path(target).exists()  # another process may have forgotten it while we waited
        if recorded:
            _forget(target)
        remove_stale_parts(target)
    finally:
        lock.release()
    return recorded


@attrs.frozen
class Lookup:
    hit: bool
    why: str = ""  # for a miss: why the cached file (if any) cannot be used


def lookup(target: Path, expected: str | None, *, source: str, force_verify: bool) -> Lookup:
    """Decide whether the cached ``target`` can be served (call while holding its lock).

    A file modified after clipkit verified it is removed and refused with
    ``ChecksumError``; a file clipkit has no record of is adopted when it hashes
    to the expected digest and otherwise replaced by a download.
    """
    if not target.is_file():
        return Lookup(False, f"there is no {target}")
    record = read_record(target)
    if record is not None and record.matches(target) and not force_verify:
        recorded = record.sha256
    elif record is not None:
        actual = hashing.sha256_file(target)
        if actual != record.sha256 and actual != expected:
            _forget(target)
            raise checksum_error(
                source, expected or record.sha256, actual,
                f"The cached file {target} was changed after clipkit verified it; it has been removed. "
                f"Fetch again to download a fresh copy.",
            )
        write_record(target, VerifiedRecord.of(target, actual, source))
        recorded = actual
    elif expected is not None:
        actual = hashing.sha256_file(target)
        if actual != expected:
            return Lookup(False, f"{target} exists but has SHA-256 {actual} (an incomplete or other file)")
        write_record(target, VerifiedRecord.of(target, actual, source))
        recorded = actual
    else:
        return Lookup(False, f"{target} exists but clipkit has no record of it and no digest to check it against")
    if expected is not None and recorded != expected:
        return Lookup(False, f"the cached {target.name} has SHA-256 {recorded}, not {expected}")
    return Lookup(True)


def quick_hit(target: Path, expected: str | None) -> bool:
    """A lock-free cache hit: the record still matches the file and the digest is the one wanted."""
    record = read_record(target)
    return record is not None and record.matches(target) and expected in (None, record.sha256)
