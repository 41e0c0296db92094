"""The download: stream into a part file while hashing, retry and resume, verify, rename into place, under one lock."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from clipkit.errors import ClipkitError, FetchError
from clipkit.fetching.cache import NOT_WRITABLE, PART_SUFFIX, NotWritable, cache_error, lock_path, meta_dir
from clipkit.fetching.hashing import checksum_error
from clipkit.fetching.records import VerifiedRecord, write_record
from clipkit.fetching.settings import FetchSettings, back_off
from clipkit.fetching.transports import Body, Transient, Transport



def _new_part(target: Path) -> tuple[Path, int]:
    """Create ``.clipkit/<name>.<random>.part`` exclusively (mode 0666 less the umask); return it and its fd."""
    while True:
        part = meta_dir(target) / f"{target.name}.{secrets.token_hex(6)}{PART_SUFFIX}"
        try:
            return part, os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class PartFile:
    """The temp file a download streams into; ``write`` is the one place bytes reach the disk."""

    def __init__(self, fd: int) -> None:
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate()

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def close(self) -> None:
        self.file.close()


def _stream(transport: Transport, part: PartFile, *, source: str, settings: FetchSettings,
            bar: Any) -> tuple[str, int]:
    """Copy the source into ``part`` while hashing; resume or restart after transient faults; return (digest, size)."""
    hasher = hashlib.sha256()
    written = 0
    furthest = 0  # most bytes ever held: a failure that got past it made progress
    failures = 0
    while True:
        body: Body | None = None
        try:
            body = transport.open(written)
            if body.start != written:  # the server ignored Range (or we asked for none): start over
                part.restart()
                hasher = hashlib.sha256()
                written = 0
                bar.reset(total=body.total)
            elif bar.total is None and body.total is not None:
                bar.total = body.total
                bar.refresh()
            for chunk in body.chunks:
                part.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
            if body.total is not None and written < body.total:
                raise Transient(f"the connection closed after {written} of {body.total} bytes")
            return hasher.hexdigest(), written
        except Transient as exc:
            if written > furthest:
                furthest = written
                failures = 0
            failures += 1
            if failures > settings.max_retries:
                raise FetchError(
                    f"could not fetch {source}: {exc} (gave up after {failures} failed attempts in a row); "
                    f"check the network or try again later",
                    source=source,
                ) from None
            back_off(settings.backoff(failures, exc.retry_after))
        finally:
            if body is not None:
                with contextlib.suppress(Exception):
                    body.close()


def download_to(transport: Transport, target: Path, *, source: str, expected: str | None,
              settings: FetchSettings, progress: bool) -> str:
    """Download into a part file next to ``target``, verify, fsync, rename into place, record; return the digest.

    An ``OSError`` from the cache side (creating, writing, syncing or renaming
    the part file) becomes ``ConfigurationError`` or ``FetchError`` naming the
    cache directory; in every failure the part file is removed.
    """
    from tqdm.auto import tqdm

    step = "create a temporary file in " + str(meta_dir(target))
    try:
        part, fd = _new_part(target)
    except OSError as exc:
        raise cache_error(exc, target.parent, action=step, source=source) from None
    bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
               disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=True)
    try:
        sink = PartFile(fd)
        try:
            step = f"write {part.name}"
            actual, _ = _stream(transport, sink, source=source, settings=settings, bar=bar)
            step = f"flush {part.name} to disk"
            sink.finish()
        finally:
            with contextlib.suppress(OSError):  # a failed flush was reported by finish() already
                sink.close()
            bar.close()
        if expected is not None and actual != expected:
            raise checksum_error(source, expected, actual,
                                  "The download was discarded and nothing was cached; check the digest you "
                                  "gave (argument, #sha256= or the URL), or whether the source changed.")
        step = f"move the download into place as {target}"
        os.replace(part, target)
    except BaseException as exc:  # Ctrl-C and a full disk too: nothing half-written may stay behind
        with contextlib.suppress(OSError):
            os.unlink(part)
        if isinstance(exc, OSError) and not isinstance(exc, ClipkitError):
            # transports turn their own OSErrors into Transient or FetchError: this one is the cache's
            needed = bar.total if isinstance(bar.total, (int, float)) and bar.total > 0 else None
            raise cache_error(exc, target.parent, action=step, source=source,
                               needed=int(needed) if needed else None) from None
        raise
    _fsync_dir(target.parent)
    write_record(target, VerifiedRecord.of(target, actual, source))
    return actual


@contextlib.contextmanager
def target_lock(target: Path, *, source: str, progress: bool) -> Iterator[None]:
    """Hold ``target``'s lock; ``NotWritable`` when the lock file cannot be created there."""
    lock = filelock.FileLock(lock_path(target))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if progress:
                print(f"clipkit: waiting for another process fetching {source} ...", file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as exc:
        if exc.errno in NOT_WRITABLE:
            raise NotWritable(exc) from None
        raise cache_error(exc, target.parent, action=f"create the lock file {lock_path(target)}",
                           source=source) from None
    try:
        yield
    finally:
        lock.release()
