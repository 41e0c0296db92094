"""Keeping a URL's credentials out of messages, logs, progress bars and cache records.

A URL may carry secrets: userinfo (``https://user:password@host/...``, also
``s3://key:secret@bucket/...``) and query parameters (``?token=...``, signed
URLs' ``X-Amz-Signature``, ``sig``, ``Expires``...), path parameters
(``/file.pt;token=...``) and fragments (``#token=...``). ``redact_url`` gives
the form clipkit shows and records: userinfo replaced by ``***@`` and every
query, path-parameter and fragment value by ``***`` (names kept, so a person
can still tell which URL it was). clipkit's own ``#sha256=<64 hex>`` stays
visible: it is a public digest, not a secret.
``scrub`` removes the same secrets from any text, such as an exception message
from a transport that quoted the URL.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["MASK", "redact_url", "scrub", "secrets_of"]

MASK = "***"
_HEX = re.compile(r"[0-9a-fA-F]+")  # a sha256 digest (or a truncated one): public
_MIN_SECRET = 4  # shorter query values ("1", "true") are masked in the URL but not hunted through text


def _split(segment: str) -> urllib.parse.SplitResult | None:
    if "://" not in segment:
        return None
    try:
        return urllib.parse.urlsplit(segment)
    except ValueError:
        return None


def _masked_pairs(text: str, sep: str, *, keep_digest: bool = False) -> str:
    """``name=value`` pairs joined by ``sep`` with every value masked (a bare value masked whole)."""
    out = []
    for item in text.split(sep):
        name, eq, value = item.partition("=")
        if keep_digest and name == "sha256" and _HEX.fullmatch(value):
            out.append(item)
        else:
            out.append(f"{name}={MASK}" if eq else (MASK if item else item))
    return sep.join(out)


def _masked_path(path: str) -> str:
    """``path`` with each segment's ``;params`` values masked (``/a.pt;token=x`` -> ``/a.pt;token=***``)."""
    return "/".join(seg.split(";", 1)[0] + ";" + _masked_pairs(seg.split(";", 1)[1], ";") if ";" in seg else seg
                    for seg in path.split("/"))


def _redact_segment(segment: str) -> str:
    parts = _split(segment)
    if parts is None:
        return segment
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = _masked_pairs(parts.query, "&") if parts.query else ""
    fragment = _masked_pairs(parts.fragment, "&", keep_digest=True) if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, _masked_path(parts.path), query, fragment))


def redact_url(url: str) -> str:
    """``url`` with userinfo, query, ``;param`` and fragment values masked (each link of a chained URL).

    A ``#sha256=<64 hex>`` fragment stays as it is; text without ``://`` is returned unchanged.
    """
    if "://" not in url:
        return url
    return "::".join(_redact_segment(segment) for segment in url.split("::"))


def secrets_of(url: str) -> list[str]:
    """The secret strings in ``url`` (userinfo, password, query/param/fragment values), raw and decoded, longest first."""
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
        params = [seg.split(";", 1)[1] for seg in parts.path.split("/") if ";" in seg]
        items = [*parts.query.split("&"), *parts.fragment.split("&"), *(p for ps in params for p in ps.split(";"))]
        for raw in items:
            name, eq, value = raw.partition("=")
            value = value if eq else raw
            if len(value) >= _MIN_SECRET and not (name == "sha256" and _HEX.fullmatch(value)):
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
