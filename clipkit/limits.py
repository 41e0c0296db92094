"""The limits every file reader works within: JSON size and depth, paths kept inside a folder, a byte budget.

A checkpoint comes from a stranger, so nothing in it may make clipkit allocate
far more memory than the file holds, recurse without bound, or read a file
outside the checkpoint's own folder. The readers (``clipkit.checkpoint``,
``clipkit.archive``, ``clipkit.torchfile``) and plugins reading side configs use
these helpers; every refusal is a ``CheckpointError`` naming the file and the
limit.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from clipkit.errors import CheckpointError, ConfigurationError

__all__ = [
    "DEFLATE_ENTRY_RATIO",
    "DEFLATE_FILE_RATIO",
    "MAX_JSON_BYTES",
    "MAX_NESTING",
    "TensorBudget",
    "check_json_text",
    "check_shape",
    "inflate_cap",
    "inside",
    "json_typed",
    "read_json",
]

MAX_NESTING = 200  # containers inside containers: real checkpoints and configs need a dozen levels
MAX_JSON_BYTES = 64 * 1024 * 1024  # a safetensors header, a shard index or a config; real ones are far smaller
DEFLATE_ENTRY_RATIO = 64  # a deflated zip entry may grow this many times its compressed size (plus one MiB) ...
DEFLATE_FILE_RATIO = 16  # ... and all deflated entries of one file together this many times the file (plus 64 MiB)
_SLACK_ENTRY = 1 << 20
_SLACK_FILE = 64 << 20

MAX_RANK = 64  # dimensions of one tensor: real weights have at most five
_MAX_ELEMENTS = 1 << 62  # elements of one tensor, and every partial product of its dims (torch counts in int64)

_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)  # a string (skipped) or a bracket


def check_shape(path: object, what: str, shape: Sequence[int]) -> None:
    """Refuse a tensor shape torch cannot hold: over ``MAX_RANK`` dims, or dims whose running product overflows.

    Torch multiplies every dim (zeros included, in order) in int64 and raises
    a bare ``RuntimeError`` on overflow; this names the tensor instead, with
    ``CheckpointError``. Dims are assumed to be non-negative ints already.
    """
    if len(shape) > MAX_RANK:
        raise CheckpointError(
            f"{path}: tensor {what} has {len(shape)} dimensions, more than clipkit's limit of {MAX_RANK}; "
            "the file is damaged or crafted"
        )
    product = 1
    for n in shape:
        product *= max(n, 1)
        if product >= _MAX_ELEMENTS:
            raise CheckpointError(
                f"{path}: tensor {what} has shape {list(shape)[:8]}{'...' if len(shape) > 8 else ''}, too many "
                "elements for any tensor (the count overflows 64 bits); the file is damaged or crafted"
            )


def check_json_text(text: str, *, what: str) -> None:
    """Refuse JSON text nested deeper than ``MAX_NESTING`` before ``json.loads`` can recurse into it.

    ``what`` names the file or header in the ``CheckpointError``. Strings are
    skipped, so brackets inside them do not count.
    """
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise CheckpointError(
                    f"{what} nests JSON more than {MAX_NESTING} levels deep; no real checkpoint or config does: "
                    "the file is damaged or crafted"
                )
        elif token in "]}":
            depth -= 1


def parse_json(data: bytes | str, *, what: str) -> Any:
    """Parse bounded JSON text (size, nesting) into Python values; ``CheckpointError`` for anything else.

    ``what`` names the source in messages. Text longer than ``MAX_JSON_BYTES``,
    nested deeper than ``MAX_NESTING``, not UTF-8 or not JSON is refused.
    """
    if len(data) > MAX_JSON_BYTES:
        raise CheckpointError(f"{what} is {len(data)} bytes of JSON, over clipkit's limit of {MAX_JSON_BYTES}")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} is not UTF-8 text ({exc}); the file is damaged") from exc
    check_json_text(text, what=what)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise CheckpointError(f"{what} is not valid JSON ({exc}); fix or delete it") from exc


def read_json(path: str | os.PathLike[str], *, what: str | None = None) -> Any:
    """Read the JSON file at ``path`` within the size and nesting limits; ``CheckpointError`` if it is not that.

    For side files (shard indexes, ``config.json``, ``open_clip_config.json``):
    the size is checked before the file is read, the nesting before it is parsed.
    """
    path = Path(path)
    label = what or str(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"{label} is not a regular file")
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{label} is {size} bytes, over clipkit's limit of {MAX_JSON_BYTES} for a JSON file")
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{label} could not be read ({exc})") from exc
    return parse_json(data, what=label)


def json_typed(value: Any, kind: type, *, what: str) -> Any:
    """``value`` if it is strictly of JSON type ``kind``; else ``ConfigurationError`` naming ``what`` (file: key) and the value.

    Nothing is coerced: ``"false"`` is not ``False``, ``true`` is not ``1``.
    ``bool`` needs a JSON ``true``/``false``; ``int`` an integer (not a bool);
    ``float`` a finite number (an integer is fine); ``str`` a string.
    """
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        expected = {bool: "a JSON true or false", int: "a JSON integer", float: "a finite JSON number"}
        raise ConfigurationError(
            f"{what} is {value!r}; expected {expected.get(kind, f'a JSON {kind.__name__}')}, not another type "
            "(nothing is coerced); fix the config"
        )
    return value


def inside(directory: str | os.PathLike[str], name: Any, *, what: str) -> Path:
    """``directory / name`` if ``name`` is a relative path with no ``..`` step; else ``CheckpointError``.

    Shard indexes and configs name files by relative path; an absolute path
    (POSIX or Windows), a ``..`` step or a NUL byte is refused, ``what`` saying
    which file named it. A link (or linked folder) leading out of the folder is
    refused by ``clipkit.folder.contained`` (the Hugging Face cache's links from a
    snapshot into its own blob store are allowed).
    """
    directory = Path(directory)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"{what} names {name!r:.80}, which is not a file name")
    parts = re.split(r"[\\/]", name)
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise CheckpointError(
            f"{what} names {name!r:.200}, outside the checkpoint's folder {directory}; only files inside it are read"
        )
    from clipkit.folder import contained

    return contained(directory, directory / name, what=what)


def inflate_cap(compressed: int, file_size: int) -> int:
    """The most bytes one deflated entry of ``compressed`` bytes, in a file of ``file_size`` bytes, may inflate to."""
    return min(DEFLATE_ENTRY_RATIO * compressed + _SLACK_ENTRY, DEFLATE_FILE_RATIO * file_size + _SLACK_FILE)


class TensorBudget:
    """The bytes a file's tensors may take: checked per storage and per view before anything is materialised.

    The file holds ``file_size`` bytes, plus what its deflated entries inflate
    to (``charge_inflation``, itself capped). Storages are charged once each;
    every tensor is a view that must lie inside its storage and have no zero or
    overlapping strides, and the views together may not need more bytes than
    the file holds.
    """

    def __init__(self, path: Path, file_size: int) -> None:
        self.path = path
        self.file_size = file_size
        self.storage_bytes = 0
        self.inflated_bytes = 0
        self.view_bytes = 0

    @property
    def capacity(self) -> int:
        """The bytes of tensor data the file can hold: its size plus its deflated entries' inflated sizes."""
        return self.file_size + self.inflated_bytes

    def charge_storage(self, key: str, nbytes: int) -> None:
        """Count a storage of ``nbytes`` against the file's capacity before it is mapped or read."""
        self.storage_bytes += nbytes
        if self.storage_bytes > self.capacity:
            raise CheckpointError(
                f"{self.path}: its storages need {self.storage_bytes} bytes by storage {key!r}, more than the "
                f"{self.capacity} the file holds; the file is truncated, damaged or crafted"
            )

    def charge_inflation(self, name: str, nbytes: int) -> None:
        """Count a deflated entry's inflated size against ``DEFLATE_FILE_RATIO`` times the file."""
        self.inflated_bytes += nbytes
        cap = DEFLATE_FILE_RATIO * self.file_size + _SLACK_FILE
        if self.inflated_bytes > cap:
            raise CheckpointError(
                f"{self.path}: its compressed entries inflate to over {cap} bytes by {name} ({self.inflated_bytes}); "
                "clipkit refuses zip bombs: store the entries uncompressed (torch.save does)"
            )

    def charge_view(self, what: str, storage_nbytes: int, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], itemsize: int) -> None:
        """Check one tensor view over a storage of ``storage_nbytes`` bytes and count its bytes.

        Raises ``CheckpointError`` for negative numbers, a size/stride rank
        mismatch, a view reaching past its storage, a stride of 0 on a dimension
        longer than 1, overlapping elements, or views needing more bytes in
        total than the file holds.
        """
        if len(size) != len(stride) or offset < 0 or any(n < 0 for n in (*size, *stride)):
            raise CheckpointError(
                f"{self.path}: tensor {what} has an invalid view (offset {offset}, size {list(size)}, "
                f"stride {list(stride)}); the file is damaged or crafted"
            )
        check_shape(self.path, what, size)
        numel = math.prod(size)
        if numel == 0:
            return
        reach = 0  # the furthest element index the dimensions so far reach
        for st, n in sorted((st, n) for n, st in zip(size, stride) if n > 1):
            if st <= reach:
                raise CheckpointError(
                    f"{self.path}: tensor {what} repeats or overlaps its elements (size {list(size)}, stride "
                    f"{list(stride)}), needing more memory than the file holds; the file is crafted"
                )
            reach += (n - 1) * st
        if (offset + reach + 1) * itemsize > storage_nbytes:
            raise CheckpointError(
                f"{self.path}: tensor {what} (size {list(size)}, offset {offset}) needs "
                f"{(offset + reach + 1) * itemsize} bytes but its storage holds {storage_nbytes}; "
                "the file is truncated, damaged or crafted"
            )
        self.view_bytes += numel * itemsize
        if self.view_bytes > self.capacity:
            raise CheckpointError(
                f"{self.path}: its tensors need {self.view_bytes} bytes by {what}, more than the {self.capacity} "
                "the file holds; tensors sharing their storage this much are crafted"
            )
