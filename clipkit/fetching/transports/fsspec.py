"""s3:// and every other fsspec protocol: reads through the filesystem, a resumed attempt seeks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from clipkit.errors import AccessDeniedError, ClipkitError, ConfigurationError, FetchError, SourceNotFoundError
from clipkit.fetching.redact import scrub
from clipkit.fetching.settings import FetchSettings
from clipkit.fetching.sources import S3_SCHEMES, file_segment, url_scheme
from clipkit.fetching.transports.base import Body, Transient, is_permanent_dns_failure

FSSPEC_CHUNK = 8 << 20  # bytes per fsspec read: one ranged GET each on object stores


def _transient_fsspec_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import aiohttp

        types.append(aiohttp.ClientError)
    with contextlib.suppress(ImportError):
        from botocore import exceptions as boto

        types += [boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError,
                  boto.ConnectionClosedError]
    return tuple(types)


def _refuse_userinfo(location: str, source: str) -> None:
    """Refuse ``user:secret@`` in any link of an fsspec URL, without echoing it (``ConfigurationError``).

    Filesystems pass such a netloc on as they please (botocore quotes it in its
    own errors and DEBUG logs), so credentials must come through
    ``storage_options`` or the protocol's own environment variables instead.
    """
    for segment in location.split("::"):
        netloc = segment.split("://", 1)[1].split("/", 1)[0] if "://" in segment else ""
        # Only ``user:secret@`` is credentials: ``bucket@namespace`` (oci://) and ``container@account``
        # (abfs://) are how those filesystems name a location.
        if ":" in netloc.rpartition("@")[0]:
            scheme = url_scheme(segment)
            hint = ("storage_options={'key': ..., 'secret': ...} or the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                    "variables (or a profile)") if scheme in S3_SCHEMES else (
                    "storage_options (e.g. {'username': ..., 'password': ...}) or the protocol's own configuration")
            raise ConfigurationError(
                f"{source} carries credentials in its {scheme}:// URL (user:secret@); clipkit does not pass "
                f"credentials that way, so they cannot reach logs or error messages: use {hint}"
            )


class _Scrubbed:
    """An exception's text with the URL's secrets masked, and the exception itself (``cause``) for type tests."""

    def __init__(self, text: str, cause: BaseException) -> None:
        self.text = text
        self.cause = cause

    def __str__(self) -> str:
        return self.text


class FsspecTransport:
    """Reads through any fsspec filesystem; a resumed attempt seeks to where the last one broke off."""

    def __init__(self, location: str, source: str, storage_options: Mapping[str, Any], settings: FetchSettings) -> None:
        _refuse_userinfo(location, source)
        self.location = location
        self.source = source
        self.storage_options = dict(storage_options)
        if url_scheme(file_segment(location)) in S3_SCHEMES:
            # the same stall timeout as over HTTP, unless the caller configured botocore themselves
            timeouts = {"read_timeout": settings.read_timeout, "connect_timeout": settings.read_timeout}
            self.storage_options["config_kwargs"] = {**timeouts, **(self.storage_options.get("config_kwargs") or {})}
        self.settings = settings
        self._fs: Any = None
        self._path = ""

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            import fsspec

            try:
                # A fresh instance: fsspec's instance cache would keep a client made under older
                # credentials or endpoint variables.
                self._fs, self._path = fsspec.core.url_to_fs(
                    self.location, skip_instance_cache=True, **self.storage_options
                )
            except ImportError as exc:
                scheme = url_scheme(self.location)
                hint = "pip install 'clipkit[s3]'" if scheme in S3_SCHEMES else "install the fsspec implementation"
                raise ConfigurationError(
                    f"cannot fetch {self.source}: the filesystem for {scheme}:// is not installed ({exc}); {hint}"
                ) from None
            except TypeError as exc:
                raise ConfigurationError(
                    f"storage_options {sorted(self.storage_options)} were refused by the "
                    f"{url_scheme(self.location)}:// filesystem: {scrub(str(exc), self.location)}"
                ) from None
            except Exception as exc:  # FTP, SFTP... connect while the filesystem is made
                self._raise(exc)
        return self._fs, self._path

    def _raise(self, exc: BaseException) -> None:
        mapped = self._map(exc)
        if mapped is exc:
            raise exc
        if scrub(str(exc), self.location) != str(exc):
            raise mapped from None  # the original's text holds a secret: a traceback must not print it
        raise mapped from exc

    def _map(self, exc: BaseException) -> BaseException:
        """A typed error for a transport exception, its text scrubbed of the URL's secrets."""
        if isinstance(exc, (ClipkitError, Transient)) or not isinstance(exc, Exception):
            return exc
        name = type(exc).__name__
        exc = _Scrubbed(scrub(str(exc), self.location), exc)
        if isinstance(exc.cause, (FileNotFoundError, IsADirectoryError)):
            return SourceNotFoundError(f"{self.source} does not exist ({exc}); check the bucket and key",
                                       source=self.source)
        if isinstance(exc.cause, PermissionError):
            if self.storage_options.get("anon"):
                advice = "anonymous access is not allowed there; drop anon=True and provide credentials"
            else:
                advice = ("check the credentials (AWS_* variables, ~/.aws files, or storage_options key/secret), "
                          "or use storage_options={'anon': True} for a public bucket")
            return AccessDeniedError(f"access to {self.source} was refused ({exc}); {advice}", source=self.source)
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return AccessDeniedError(
                f"no usable credentials to read {self.source} ({exc}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                f"or a profile, or pass storage_options={{'anon': True}} for a public bucket",
                source=self.source,
            )
        if is_permanent_dns_failure(exc.cause):
            return FetchError(f"could not fetch {self.source}: its host name does not resolve ({name}); check the URL",
                              source=self.source)
        if isinstance(exc.cause, _transient_fsspec_types()) or (type(exc.cause) is OSError):
            return Transient(f"{name}: {exc}")
        # anything else a filesystem raises (botocore's ParamValidationError, an OSError, ...) is a failed fetch
        return FetchError(f"could not fetch {self.source}: {name}: {exc}", source=self.source)

    def open(self, offset: int) -> Body:
        fs, path = self._filesystem()
        scheme = url_scheme(file_segment(self.location))
        kwargs = {"block_size": FSSPEC_CHUNK, "cache_type": "none"} if scheme in S3_SCHEMES else {}
        try:
            handle = fs.open(path, "rb", **kwargs)
        except Exception as exc:
            self._raise(exc)
        start = 0
        try:
            total = getattr(handle, "size", None)
            if total is None:
                total = fs.size(path)
            if offset:
                with contextlib.suppress(OSError, ValueError):
                    handle.seek(offset)
                    start = handle.tell()
        except Exception as exc:
            handle.close()
            self._raise(exc)

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    data = handle.read(FSSPEC_CHUNK)
                except Exception as exc:
                    self._raise(exc)
                if not data:
                    return
                yield data

        return Body(start=start, total=int(total) if total is not None else None, chunks=chunks(), close=handle.close)
