"""Clear answers for odd inputs: an empty or malformed source, paths the OS cannot name, and non-regular files.

A FIFO would block the reader forever, ``/dev/zero`` never ends, a socket
cannot be read at all; an empty source string would name the current
directory; a name longer than the OS allows, or ``~user`` for no such user,
would surface as a bare ``OSError``/``RuntimeError``. Each is refused before anything is opened, with a message naming
what was given.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from clipkit.errors import CheckpointError, CheckpointNotFoundError, ConfigurationError

__all__ = ["check_path_length", "check_regular_file", "check_source_argument", "local_path"]

NAME_MAX = 255  # bytes in one path component (Linux, macOS, Windows)
PATH_MAX = 4096  # bytes in a whole path (Linux)

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


_PSEUDO_ROOTS = ("/proc", "/sys")


def check_source_argument(source: Any) -> None:
    """Refuse a ``source`` that is not a string or path, or is an empty or blank string, with ``ConfigurationError``."""
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigurationError(
            "source must be a model name, a path or a URL (str or os.PathLike), "
            f"got {type(source).__name__} {source!r:.80}"
        )
    try:
        text = os.fspath(source)
    except TypeError as exc:  # a PathLike whose __fspath__ returns neither str nor bytes
        raise ConfigurationError(
            f"source {type(source).__name__} is an os.PathLike whose __fspath__ did not return a path ({exc})"
        ) from exc
    if isinstance(text, bytes):
        raise ConfigurationError(f"source must be text, got bytes {text!r:.80}")
    if not text.strip():
        raise ConfigurationError(
            f"source is empty ({text!r}); pass a model name (clipkit.available_models()), a path or a URL"
        )


def check_path_length(path: str | os.PathLike[str], *, error: type[Exception] = ConfigurationError,
                      what: str = "source path") -> None:
    """Refuse ``path`` with ``error`` when a component exceeds ``NAME_MAX`` bytes or the whole ``PATH_MAX``.

    The OS would answer ``ENAMETOOLONG`` from the first ``stat``; this says
    which part is too long instead. ``what`` names the path in the message.
    """
    raw = os.fsencode(path)
    longest = max(raw.split(os.fsencode(os.sep)), key=len)
    if len(longest) > NAME_MAX or len(raw) >= PATH_MAX:
        part = "a component" if len(longest) > NAME_MAX else "the whole path"
        size = len(longest) if len(longest) > NAME_MAX else len(raw)
        raise error(
            f"{what} {os.fsdecode(raw)[:120]!r}... is too long for the file system ({part} is {size} bytes; "
            f"the limits are {NAME_MAX} per component and {PATH_MAX} in all); check where the path came from"
        )


def local_path(text: str) -> Path:
    """``text`` as a local path, ``~`` expanded; ``CheckpointNotFoundError``/``ConfigurationError`` when it cannot be.

    ``~user`` for a user this machine does not know is reported as a missing
    checkpoint naming the path; an over-long path as ``ConfigurationError``.
    """
    check_path_length(text)
    try:
        path = Path(text).expanduser()
    except RuntimeError as exc:  # "Could not determine home directory" for ~nosuchuser
        raise CheckpointNotFoundError(
            f"checkpoint not found: {text!r:.200}: {text.split(os.sep, 1)[0]!r:.80} names no user on this machine"
        ) from exc
    check_path_length(path)
    return path


def _pseudo_filesystem(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (links resolved) lies under ``/proc`` or ``/sys``, whose files report sizes that mean nothing."""
    resolved = os.path.realpath(path)
    return any(resolved == root or resolved.startswith(root + os.sep) for root in _PSEUDO_ROOTS)


def check_regular_file(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` with ``CheckpointError`` when it exists but is a FIFO, a device, a socket or a procfs/sysfs file.

    Uses ``os.stat`` only, so a FIFO is never opened (opening one blocks).
    Directories and regular files pass; a missing path is left to the caller.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) and _pseudo_filesystem(path):
        raise CheckpointError(
            f"{Path(path)} is a kernel pseudo-file (procfs/sysfs: its size and contents are generated), not a "
            "checkpoint file; pass the path of a saved checkpoint or its folder"
        )
    for test, kind in _KINDS:
        if test(mode):
            raise CheckpointError(
                f"{Path(path)} is {kind}, not a checkpoint file; pass the path of a saved checkpoint or its folder"
            )
