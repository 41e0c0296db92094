"""Keeping a URL's credentials out of messages, logs, progress bars and cache records.

A URL may carry secrets: userinfo (``https://user:password@host/...``, also
``s3://key:secret@bucket/...``) and query parameters (``?token=...``, signed
URLs' ``X-Amz-Signature``, ``sig``, ``Expires``...). ``redact_url`` gives the
form clipkit shows and records: userinfo replaced by ``***@`` and every query
value by ``***`` (names kept, so a person can still tell which URL it was).
``scrub`` removes the same secrets from any text, such as an exception message
from a transport that quoted the URL.
"""

from __future__ import annotations

import urllib.parse

__all__ = ["MASK", "redact_url", "scrub", "secrets_of"]

MASK = "***"
_MIN_SECRET = 4  # shorter query values ("1", "true") are masked in the URL but not hunted through text


def _split(segment: str) -> urllib.parse.SplitResult | None:
    if "://" not in segment:
        return None
    try:
        return urllib.parse.urlsplit(segment)
    except ValueError:
        return None


def _redact_segment(segment: str) -> str:
    parts = _split(segment)
    if parts is None:
        return segment
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{urllib.parse.quote(name, safe='')}={MASK}" for name, _ in pairs) if pairs else MASK
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_url(url: str) -> str:
    """``url`` with userinfo and query values masked (each link of a chained fsspec URL); other text unchanged."""
    if "://" not in url:
        return url
    return "::".join(_redact_segment(segment) for segment in url.split("::"))


def secrets_of(url: str) -> list[str]:
    """The secret strings in ``url`` (userinfo, its password, query values), raw and percent-decoded, longest first."""
    found: set[str] = set()
    for segment in url.split("::"):
        parts = _split(segment)
        if parts is None:
            continue
        if "@" in parts.netloc:
            userinfo = parts.netloc.rsplit("@", 1)[0]
            found.add(userinfo)
            if ":" in userinfo:
                found.add(userinfo.split(":", 1)[1])
        for raw in parts.query.split("&"):
            value = raw.split("=", 1)[1] if "=" in raw else raw
            if len(value) >= _MIN_SECRET:
                found.add(value)
    found |= {urllib.parse.unquote(s) for s in found} | {urllib.parse.unquote_plus(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with ``url`` shown redacted and every secret of ``url`` masked wherever else it appears."""
    if "://" not in url:
        return text
    text = text.replace(url, redact_url(url))
    for secret in secrets_of(url):
        text = text.replace(secret, MASK)
    return text
