"""Reading and preprocessing one image, with every failure turned into a reason instead of an exception."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

Transform = Callable[[Any], torch.Tensor]
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f..>" differs per run


def read_bytes(uri: str, storage_options: Mapping[str, Any]) -> bytes:
    """The bytes of a local path or any fsspec URL."""
    if "://" not in uri:
        with open(uri, "rb") as handle:
            return handle.read()
    import fsspec

    with fsspec.open(uri, "rb", **dict(storage_options)) as handle:
        return handle.read()


def decode(data: bytes, transform: Transform) -> torch.Tensor:
    """Decode an encoded image fully and run ``transform`` (the model's preprocess) on it."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return transform(image)


def failure_reason(exc: BaseException) -> str:
    """One line saying why an input was skipped: the exception's type and message."""
    message = " ".join(_OBJECT_REPR.sub("", str(exc)).split()) or "no message"
    return f"{type(exc).__name__}: {message}"


def load_pixels(uri: str, storage_options: Mapping[str, Any], transform: Transform) -> tuple[torch.Tensor | None, str | None]:
    """``(pixels, None)`` for an image that reads and decodes, else ``(None, reason)``; never raises for a bad file.

    Any exception from reading, decoding or preprocessing is a property of that
    one input (missing, truncated, not an image, an unsupported mode), so it is
    reported with the input instead of stopping the run.
    """
    try:
        return decode(read_bytes(uri, storage_options), transform), None
    except Exception as exc:  # noqa: BLE001 - any failure of one input is recorded, never raised
        return None, failure_reason(exc)
