"""What every transport gives the download loop: a body of bytes from an offset, or a ``Transient`` failure."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Protocol

import attrs


class Transient(Exception):
    """An attempt failed in a way worth retrying (connection, timeout, 408/429/5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@attrs.define
class Body:
    """One response: where its bytes start in the object, the object's size if known, and the bytes."""

    start: int
    total: int | None
    chunks: Iterator[bytes]
    close: Callable[[], None]


class Transport(Protocol):
    """Opens the source at byte ``offset`` (a transport may answer from 0 instead: ``Body.start`` says which)."""

    def open(self, offset: int) -> Body: ...


# getaddrinfo's answers that mean "this name does not exist" (not "try again later", which is EAI_AGAIN)
_PERMANENT_EAI = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_FAIL") if hasattr(socket, name)}


def is_permanent_dns_failure(exc: object) -> bool:
    """Whether ``exc`` (or an error it wraps) is a DNS answer that the name does not exist: retrying cannot help."""
    seen = 0
    while isinstance(exc, BaseException) and seen < 8:
        if isinstance(exc, socket.gaierror) and exc.errno in _PERMANENT_EAI:
            return True
        exc = getattr(exc, "os_error", None) or getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
        seen += 1
    return False
