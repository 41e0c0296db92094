"""Fetch settings from the environment: retries, backoff and timeouts, offline mode, the progress bar."""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from clipkit.errors import ConfigurationError

FALSY = frozenset({"", "0", "false", "no", "off"})

# Indirection so tests can record the backoff delays instead of sleeping through them.
_sleep: Callable[[float], None] = time.sleep


def back_off(seconds: float) -> None:
    """Wait ``seconds`` before the next attempt (``FetchSettings.backoff`` says how long); every retry loop waits here."""
    _sleep(seconds)


def _env_number(name: str, default: float, *, minimum: float, integer: bool = False) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"${name} must be {kind} >= {minimum}, got {raw!r}; fix or unset it")
    return value


@attrs.frozen(kw_only=True)
class FetchSettings:
    """Retry, backoff and timeout knobs for one fetch; ``FetchSettings.from_env()`` reads them from the environment.

    ``max_retries`` bounds consecutive failed attempts that made no progress;
    the n-th retry waits ``retry_base_delay * 2**(n-1)`` seconds (with jitter),
    or what the server's ``Retry-After`` asks, never more than
    ``retry_max_delay``; ``read_timeout`` is how long a connection may go without
    a byte before it counts as stalled.
    """

    max_retries: int = 5
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    read_timeout: float = 60.0

    @classmethod
    def from_env(cls) -> FetchSettings:
        """Settings from the environment; each variable that is unset keeps its default."""
        default = attrs.fields(cls)
        return cls(
            max_retries=_env_number("CLIPKIT_MAX_RETRIES", default.max_retries.default, minimum=0, integer=True),
            retry_base_delay=_env_number("CLIPKIT_RETRY_BASE_DELAY", default.retry_base_delay.default, minimum=0),
            retry_max_delay=_env_number("CLIPKIT_RETRY_MAX_DELAY", default.retry_max_delay.default, minimum=0),
            read_timeout=_env_number("CLIPKIT_READ_TIMEOUT", default.read_timeout.default, minimum=0.001),
        )

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt after ``failures`` consecutive failures."""
        if retry_after is not None:
            return min(self.retry_max_delay, max(0.0, retry_after))
        exponential = self.retry_base_delay * 2 ** max(0, failures - 1)
        return min(self.retry_max_delay, exponential) * random.uniform(0.5, 1.0)


def is_offline() -> bool:
    """Whether ``CLIPKIT_OFFLINE`` is set (to anything but ``0``, ``false``, ``no``, ``off``): nothing is downloaded.

    Every ``fetch_checkpoint`` implementation must honour it, third-party
    plugins included: before touching the network, call ``is_offline()`` and,
    when it is true and the checkpoint is not already on disk, raise
    ``clipkit.errors.OfflineError`` (naming the source and saying it is not
    cached) instead of downloading. ``clipkit.fetching.fetch`` does this itself,
    so a plugin that delegates to it needs no check of its own.
    """
    return _CACHE_ONLY.get() or os.environ.get("CLIPKIT_OFFLINE", "").strip().lower() not in FALSY


_CACHE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("clipkit_cache_only", default=False)


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """Within the block (this thread or task only), ``is_offline()`` is true: fetchers serve caches, download nothing.

    How ``clipkit.model_sources`` asks every source of a name for a cached copy
    before any of them is downloaded.
    """
    token = _CACHE_ONLY.set(True)
    try:
        yield
    finally:
        _CACHE_ONLY.reset(token)


def progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    forced = os.environ.get("CLIPKIT_PROGRESS", "").strip().lower()
    if forced:
        return forced not in FALSY
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False
