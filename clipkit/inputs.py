"""Clear answers for odd inputs: an empty source, and paths that are not regular files (FIFOs, devices, sockets).

A FIFO would block the reader forever, ``/dev/zero`` never ends, a socket
cannot be read at all; an empty source string would name the current
directory. Each is refused before anything is opened, with a message naming
what was given.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from clipkit.errors import CheckpointError, ConfigurationError

__all__ = ["check_regular_file", "check_source_argument"]

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_source_argument(source: Any) -> None:
    """Refuse a ``source`` that is not a string or path, or is an empty or blank string, with ``ConfigurationError``."""
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigurationError(
            "source must be a model name, a path or a URL (str or os.PathLike), "
            f"got {type(source).__name__} {source!r:.80}"
        )
    text = os.fspath(source)
    if isinstance(text, bytes):
        raise ConfigurationError(f"source must be text, got bytes {text!r:.80}")
    if not text.strip():
        raise ConfigurationError(
            f"source is empty ({text!r}); pass a model name (clipkit.available_models()), a path or a URL"
        )


def check_regular_file(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` with ``CheckpointError`` when it exists but is a FIFO, a device or a socket.

    Uses ``os.stat`` only, so a FIFO is never opened (opening one blocks).
    Directories and regular files pass; a missing path is left to the caller.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    for test, kind in _KINDS:
        if test(mode):
            raise CheckpointError(
                f"{Path(path)} is {kind}, not a checkpoint file; pass the path of a saved checkpoint or its folder"
            )
