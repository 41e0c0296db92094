"""What a source names: its scheme, the file a URL points at, the local path it may be, and its expected digest."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from pathlib import Path

import attrs

from clipkit.errors import ConfigurationError
from clipkit.spec import check_sha256

HTTP_SCHEMES = frozenset({"http", "https"})
S3_SCHEMES = frozenset({"s3", "s3a"})
_DIGEST_DIR = re.compile(r"^[0-9a-fA-F]{64}$")
_FRAGMENT = re.compile(r"^(?P<location>.*)#sha256=(?P<digest>[^#&]*)$", re.DOTALL)
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")


def url_scheme(source: str) -> str | None:
    """The lower-case protocol of a URL (``"https"``; a chained fsspec URL's first link), ``None`` for a plain path."""
    match = _SCHEME.match(source)
    if match:
        return match["scheme"].lower()
    if "::" in source:
        head = source.split("::", 1)[0]
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", head):
            return head.lower()
    return None


def is_fsspec_url(source: str) -> bool:
    """Whether ``source`` is a URL whose protocol fsspec knows (installed or not), chained URLs included."""
    scheme = url_scheme(source)
    if scheme is None:
        return False
    import fsspec

    return scheme in fsspec.available_protocols()


def file_segment(location: str) -> str:
    """The part of a (possibly chained) URL that names the file: the first link with ``://``."""
    if "::" in location:
        for segment in location.split("::"):
            if "://" in segment:
                return segment
    return location


def url_path(location: str) -> str:
    segment = file_segment(location)
    scheme = url_scheme(segment)
    if scheme in HTTP_SCHEMES:
        return urllib.parse.urlsplit(segment).path
    return segment.split("://", 1)[1] if "://" in segment else segment


def digest_in_path(location: str) -> str | None:
    """The digest a URL carries as its last directory (``.../<64 hex>/<file>``), lower-cased, or ``None``."""
    parts = url_path(location).split("/")
    if len(parts) >= 2 and _DIGEST_DIR.match(parts[-2]):
        return parts[-2].lower()
    return None


def _split_fragment(source: str) -> tuple[str, str | None]:
    """Split ``source`` into the location to fetch and the raw ``#sha256=`` value (``None`` if absent)."""
    if url_scheme(source) in HTTP_SCHEMES:
        parts = urllib.parse.urlsplit(source)
        if not parts.fragment:
            return parts._replace(fragment="").geturl(), None
        fields = urllib.parse.parse_qs(parts.fragment, keep_blank_values=True)
        location = parts._replace(fragment="").geturl()
        if "sha256" not in fields:
            return location, None  # a page anchor means nothing to a download
        return location, fields["sha256"][-1]
    # Elsewhere '#' may be part of an object key: only a trailing '#sha256=...' is ours.
    match = _FRAGMENT.match(source)
    if match:
        return match["location"], match["digest"]
    return source, None


@attrs.frozen
class ResolvedSource:
    """A source split into what to fetch (``location``, digest fragment removed) and the digest it must have."""

    location: str
    sha256: str | None
    digest_origin: str | None  # "argument", "fragment", "path" or None


def resolve_digest(source: str, sha256: str | None = None) -> ResolvedSource:
    """Find the digest ``source`` must have: ``sha256``, else a ``#sha256=`` fragment, else a 64-hex last directory.

    Raises ``ConfigurationError`` (before any network access) for a malformed
    digest from the argument or the fragment, and when the argument and the
    fragment disagree. A digest inferred from the URL path is overridden by an
    explicit one without complaint: the directory name may mean something else.
    """
    explicit = check_sha256(sha256, what="sha256")
    location, raw_fragment = _split_fragment(source)
    fragment = None
    if raw_fragment is not None:
        fragment = check_sha256(raw_fragment, what=f"the #sha256= fragment of {source!r}")
    if explicit and fragment and explicit != fragment:
        raise ConfigurationError(
            f"two different digests were given for {location!r}: sha256={explicit} and #sha256={fragment} "
            f"in the URL; drop one of them or make them agree"
        )
    if explicit:
        return ResolvedSource(location, explicit, "argument")
    if fragment:
        return ResolvedSource(location, fragment, "fragment")
    in_path = digest_in_path(location)
    return ResolvedSource(location, in_path, "path" if in_path else None)


def local_path_of(location: str) -> Path | None:
    """The local path a ``file://`` URL or a plain path names, or ``None`` for any other URL."""
    scheme = url_scheme(location)
    if scheme is None:
        return Path(location).expanduser()
    if scheme == "file" and "::" not in location:
        parts = urllib.parse.urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(
                f"{location!r} names a file on host {parts.netloc!r}; file:// URLs must be local "
                f"(file:///absolute/path)"
            )
        return Path(urllib.request.url2pathname(parts.path))
    return None
