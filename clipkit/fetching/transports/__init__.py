"""Transports: how the bytes of a remote source arrive (http.py over urllib, fsspec.py for everything else)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipkit.errors import NoFetcherError
from clipkit.fetching.settings import FetchSettings
from clipkit.fetching.sources import HTTP_SCHEMES, is_fsspec_url, url_scheme
from clipkit.fetching.transports.base import Body, Transient, Transport
from clipkit.fetching.transports.fsspec import FsspecTransport
from clipkit.fetching.transports.http import HTTPTransport

__all__ = ["Body", "FsspecTransport", "HTTPTransport", "Transient", "Transport", "transport_for"]


def transport_for(location: str, source: str, storage_options: Mapping[str, Any],
                   settings: FetchSettings) -> Transport:
    """The transport that reads ``location`` (``NoFetcherError`` for a protocol neither urllib nor fsspec knows)."""
    scheme = url_scheme(location)
    if scheme in HTTP_SCHEMES:
        return HTTPTransport(location, source, storage_options, settings)
    if is_fsspec_url(location):
        return FsspecTransport(location, source, storage_options, settings)
    raise NoFetcherError.for_source(source, scheme)
