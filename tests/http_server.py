"""A real HTTP server on 127.0.0.1 for fetch tests: Range support, fault injection, request counting.

Use it as a context manager::

    with LoopbackServer() as server:
        server.add("/models/tiny.pt", data, faults=[Status(503, retry_after=2), Drop(after=1000)])
        url = server.url("/models/tiny.pt")
        ...
        assert server.count("/models/tiny.pt") == 3

Each GET of a resource consumes the next fault in its queue (if any) and is
otherwise served normally; persistent behaviour (``ignore_range``, a fixed
``status``, ``throttle``) is set per resource. Every request is recorded
(method, path, Range header, status, body bytes sent). The handler threads are
daemons and every blocking fault ends when the server stops.
"""

from __future__ import annotations

import collections
import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SEND_CHUNK = 16 * 1024


@dataclass(frozen=True)
class Status:
    """Answer with this status (and an optional ``Retry-After`` in seconds or as an HTTP date), no body.

    ``location``: a ``Location`` header, for a redirect (``Status(302, location=...)``).
    """

    code: int
    retry_after: str | int | None = None
    location: str | None = None


@dataclass(frozen=True)
class Drop:
    """Send the headers and the first ``after`` body bytes, then cut the connection."""

    after: int


@dataclass(frozen=True)
class Stall:
    """Send the first ``after`` body bytes, then go silent for ``seconds`` (or until the server stops)."""

    after: int
    seconds: float = 30.0


@dataclass(frozen=True)
class Hang:
    """Send the first ``after`` body bytes, signal ``Resource.reached``, then block until the server stops."""

    after: int


@dataclass(frozen=True)
class IgnoreRange:
    """Answer this request with 200 and the whole body even if it asked for a Range."""


@dataclass(frozen=True)
class Corrupt:
    """Serve the body with one byte flipped (same length, wrong content)."""


@dataclass
class Resource:
    """One servable file and how the server treats requests for it."""

    data: bytes
    faults: collections.deque = field(default_factory=collections.deque)
    ignore_range: bool = False
    status: int | None = None
    throttle: float = 0.0  # seconds to sleep between SEND_CHUNK-sized writes
    reached: threading.Event = field(default_factory=threading.Event)

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@dataclass
class RequestRecord:
    """What one request asked for and what it got (logged on arrival, so counts never lag the client)."""

    method: str
    path: str
    range: str | None
    headers: dict[str, str]
    status: int = 0
    sent: int = 0  # body bytes handed to the socket


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _status_only(self, code: int, retry_after: str | int | None = None, location: str | None = None) -> None:
        self.record.status = code
        self.send_response(code)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        self.record = RequestRecord(self.command, self.path, self.headers.get("Range"), dict(self.headers.items()))
        owner._log(self.record)
        resource = owner.resources.get(self.path)
        if resource is None:
            self._status_only(404)
            return
        fault = owner._next_fault(resource) if not head else None
        if resource.status is not None:
            self._status_only(resource.status)
            return
        if isinstance(fault, Status):
            self._status_only(fault.code, fault.retry_after, fault.location)
            return
        data = resource.data
        if isinstance(fault, Corrupt):
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        total = len(data)
        start, end = 0, total - 1
        status = 200
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and not resource.ignore_range and not isinstance(fault, IgnoreRange):
            if if_range is None or if_range == resource.etag:
                match = _RANGE.match(wanted.strip())
                if match:
                    start = int(match[1])
                    end = min(int(match[2]), total - 1) if match[2] else total - 1
                    if start >= total or start > end:
                        self.record.status = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
        body = data[start:end + 1]
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", resource.etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if head:
            return
        limit = len(body)
        if isinstance(fault, (Drop, Stall, Hang)):
            limit = min(limit, fault.after)
        sent = 0
        try:
            while sent < limit:
                piece = body[sent:min(limit, sent + SEND_CHUNK)]
                sent += len(piece)
                self.record.sent = sent
                self.wfile.write(piece)
                if resource.throttle:
                    self.wfile.flush()
                    time.sleep(resource.throttle)
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True
            return
        if isinstance(fault, Drop):
            self.close_connection = True
            with _quiet():
                self.connection.shutdown(socket.SHUT_RDWR)
        elif isinstance(fault, Stall):
            self.close_connection = True
            owner._stopping.wait(fault.seconds)
        elif isinstance(fault, Hang):
            self.close_connection = True
            resource.reached.set()
            owner._stopping.wait()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: LoopbackServer


class LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (an ephemeral port) serving in-memory files with injected faults."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- content ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, data: bytes, *, faults: list[Any] | tuple[Any, ...] = (), ignore_range: bool = False,
            status: int | None = None, throttle: float = 0.0) -> Resource:
        """Serve ``data`` at ``path``; ``faults`` apply to successive GETs, one each, in order."""
        resource = Resource(data, collections.deque(faults), ignore_range, status, throttle)
        with self._lock:
            self.resources[path] = resource
        return resource

    # -- bookkeeping ------------------------------------------------------------------

    def _next_fault(self, resource: Resource) -> Any:
        with self._lock:
            return resource.faults.popleft() if resource.faults else None

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def log(self, path: str | None = None, method: str = "GET") -> list[RequestRecord]:
        """The recorded requests (for ``path``, with ``method``), in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.method == method and (path is None or r.path == path)]

    def count(self, path: str | None = None, method: str = "GET") -> int:
        """How many ``method`` requests reached the server (for ``path``, or for any path)."""
        return len(self.log(path, method))
