"""The harmless constructors a torch pickle may call: sets, counters, bytes, sizes, devices, layouts.

``clipkit.unpickling`` hands these to a pickle instead of the real classes:
each accepts only the arguments a plain value needs (no sizes to allocate, no
codecs beyond text encodings, no iterators) and raises
``pickle.UnpicklingError`` for anything else.
"""

from __future__ import annotations

import codecs
import pickle
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["bytearray_of", "counter", "device", "encode", "layout", "plain", "size"]


def plain(kind: Callable[..., Any]) -> Callable[..., Any]:
    """``set``/``frozenset`` of an already-built list or tuple: nothing else (no iterators, no sizes)."""

    def build(items: Any = (), *rest: Any) -> Any:
        if rest or not isinstance(items, (list, tuple, set, frozenset)):
            raise pickle.UnpicklingError(f"{kind.__name__} was called with unusual arguments")
        return kind(items)

    return build


def layout(name: Any) -> torch.layout:
    """``torch.serialization._get_layout(name)``: the torch layout named ``name`` (``"torch.strided"``)."""
    found = getattr(torch, name.removeprefix("torch."), None) if isinstance(name, str) else None
    if not isinstance(found, torch.layout):
        raise pickle.UnpicklingError(f"{name!r:.40} is not a torch layout")
    return found


def counter(counts: Any = None, *rest: Any) -> Counter:
    """``collections.Counter(dict)``: a counter of an already-built dict."""
    if rest or not isinstance(counts, (dict, type(None))):
        raise pickle.UnpicklingError("collections.Counter was called with something other than a dict")
    return Counter(counts or {})


def bytearray_of(data: Any = b"", encoding: Any = "latin1", *rest: Any) -> bytearray:
    """``bytearray(bytes)`` or ``bytearray(text, encoding)``: never ``bytearray(size)``, which would allocate."""
    if isinstance(data, str):
        data = encode(data, encoding)
    if not isinstance(data, (bytes, bytearray)) or rest:
        raise pickle.UnpicklingError("bytearray was called with something other than bytes")
    return bytearray(data)


def encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode(text, encoding)`` for text encodings only (how protocol 2 pickles bytes)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii") or rest:
        raise pickle.UnpicklingError("_codecs.encode may only turn text into bytes")
    return codecs.encode(text, encoding)


def size(dims: Any = ()) -> torch.Size:
    """``torch.Size`` of a tuple or list of ints."""
    if not isinstance(dims, (tuple, list)) or not all(type(d) is int for d in dims):
        raise pickle.UnpicklingError("torch.Size needs integers")
    return torch.Size(dims)


def device(spec: Any, *rest: Any) -> torch.device:
    """``torch.device(name[, index])`` from a short string."""
    if not isinstance(spec, str) or len(spec) > 32:
        raise pickle.UnpicklingError(f"torch.device needs a short string, the file gave {type(spec).__name__}")
    return torch.device(spec, *[r for r in rest if type(r) is int][:1])
