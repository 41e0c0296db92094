"""What every transport gives the download loop: a body of bytes from an offset, or a ``Transient`` failure."""

from __future__ import annotations

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
