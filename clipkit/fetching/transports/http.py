"""http(s):// over the standard library: every status, ``Retry-After``, ``Range`` and the read timeout in view."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from http.client import HTTPException
from typing import Any

from clipkit.errors import AccessDeniedError, ConfigurationError, FetchError, SourceNotFoundError
from clipkit.fetching.redact import redact_url
from clipkit.fetching.settings import FetchSettings
from clipkit.fetching.sources import url_scheme
from clipkit.fetching.transports.base import Body, Transient, is_permanent_dns_failure
from clipkit.version import __version__

HTTP_CHUNK = 1 << 20  # at most this many bytes per read; a read returns what has arrived
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_RETRY_STATUSES = frozenset({408, 425, 429})


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _split_userinfo(url: str) -> tuple[str, str | None]:
    """``url`` without ``user:password@``, and the ``Authorization: Basic`` value it stood for (or ``None``)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    return parts._replace(netloc=host).geturl(), "Basic " + base64.b64encode(token).decode("ascii")


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, noting each target; refuses one whose URL carries user:password@."""

    def __init__(self, transport: "HTTPTransport") -> None:
        self.transport = transport

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.transport.redirected_to = newurl
        if "@" in urllib.parse.urlsplit(newurl).netloc:
            raise FetchError(
                f"could not fetch {self.transport.where}: the server redirected (HTTP {code}) to a URL with "
                "credentials in it (user:password@), which clipkit does not follow; ask the server's owner, or "
                "fetch the target URL directly with storage_options={'headers': {'Authorization': ...}}",
                source=self.transport.source,
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HTTPTransport:
    """GETs with ``Range`` for resumption, over urllib (redirects and ``*_proxy`` variables honoured)."""

    OPTIONS = frozenset({"headers"})

    def __init__(self, url: str, source: str, storage_options: Mapping[str, Any], settings: FetchSettings) -> None:
        unknown = set(storage_options) - self.OPTIONS
        if unknown:
            raise ConfigurationError(
                f"storage_options {sorted(unknown)} are not understood for {url_scheme(url)}:// sources; "
                f"only {sorted(self.OPTIONS)} (extra request headers, e.g. Authorization) is"
            )
        self.url, credentials = _split_userinfo(url)
        self.source = source
        self.headers = dict(storage_options.get("headers") or {})
        if credentials and not any(k.lower() == "authorization" for k in self.headers):
            self.headers["Authorization"] = credentials
        self.settings = settings
        self.validator: str | None = None  # ETag / Last-Modified of the first response, for If-Range
        self.ranges_usable = True
        self.redirected_to: str | None = None  # the last redirect target (raw: show it through redact_url only)
        self._opener = urllib.request.build_opener(_RedirectHandler(self))

    @property
    def where(self) -> str:
        """The source as messages name it, with the redirect target (redacted) when the server redirected."""
        if self.redirected_to is None:
            return self.source
        return f"{self.source} (redirected to {redact_url(self.redirected_to)})"

    def _request(self, offset: int) -> urllib.request.Request:
        request = urllib.request.Request(self.url, headers={
            "User-Agent": f"clipkit/{__version__}",
            "Accept-Encoding": "identity",
        })
        for key, value in self.headers.items():
            request.add_unredirected_header(key, value)  # credentials do not follow a redirect to another host
        if offset and self.ranges_usable:
            request.add_header("Range", f"bytes={offset}-")
            if self.validator:
                request.add_header("If-Range", self.validator)
        return request

    def _fail(self, code: int, reason: str, headers: Any) -> Exception:
        label = f"HTTP {code} {reason}".strip()
        if code in (401, 403):
            return AccessDeniedError(
                f"access to {self.where} was refused ({label}); check the URL, or pass credentials with "
                f"storage_options={{'headers': {{'Authorization': ...}}}}",
                source=self.source,
            )
        if code in (404, 410):
            return SourceNotFoundError(f"{self.where} does not exist ({label}); check the URL", source=self.source)
        if code in _RETRY_STATUSES or code >= 500:
            return Transient(label, retry_after=_parse_retry_after(headers.get("Retry-After") if headers else None))
        return FetchError(f"could not fetch {self.where}: the server answered {label}", source=self.source)

    def open(self, offset: int) -> Body:
        request = self._request(offset)
        self.redirected_to = None
        try:
            response = self._opener.open(request, timeout=self.settings.read_timeout)
        except FetchError:  # a refused redirect (a ConnectionError: must not be taken for a transient fault)
            raise
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                if exc.code == 416 and offset:
                    self.ranges_usable = False  # the object changed under us; start over
                    raise Transient("HTTP 416 Range Not Satisfiable; restarting from the first byte") from None
                raise self._fail(exc.code, str(exc.reason or ""), exc.headers) from None
        except urllib.error.URLError as exc:
            import ssl

            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise FetchError(f"could not fetch {self.where}: TLS certificate check failed: {exc.reason}",
                                 source=self.source) from None
            if is_permanent_dns_failure(exc.reason):
                raise FetchError(f"could not fetch {self.where}: its host name does not resolve ({exc.reason}); "
                                 "check the URL", source=self.source) from None
            raise Transient(f"connection failed: {exc.reason}") from None
        except ValueError as exc:  # http.client.InvalidURL and friends: retrying cannot help
            raise FetchError(f"could not fetch {self.where}: the URL is not valid ({type(exc).__name__})",
                             source=self.source) from None
        except (OSError, HTTPException) as exc:
            raise Transient(f"connection failed: {type(exc).__name__}: {exc}") from None

        status = response.status
        headers = response.headers
        length = headers.get("Content-Length")
        if status == 206 and "Range" in request.headers:
            match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if not match or int(match[1]) != offset:
                response.close()
                self.ranges_usable = False
                raise Transient(f"the server answered a Range request with Content-Range "
                                 f"{headers.get('Content-Range')!r}; restarting from the first byte")
            start, total = offset, (int(match[3]) if match[3] != "*" else None)
        else:
            start = 0
            total = int(length) if length and length.isdigit() else None
            etag = headers.get("ETag")
            if etag and not etag.startswith("W/"):
                self.validator = etag
            elif headers.get("Last-Modified"):
                self.validator = headers.get("Last-Modified")
        timeout = self.settings.read_timeout

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    data = response.read1(HTTP_CHUNK)  # what has arrived: a stall loses nothing received
                except (TimeoutError, socket.timeout):
                    raise Transient(f"no data for {timeout:g} s (stalled transfer)") from None
                except (OSError, HTTPException) as exc:
                    raise Transient(f"connection broken: {type(exc).__name__}: {exc}") from None
                if not data:
                    return
                yield data

        return Body(start=start, total=total, chunks=chunks(), close=response.close)
