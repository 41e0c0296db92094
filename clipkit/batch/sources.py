"""What a batch run reads: a SOURCE (folder, glob, fsspec URL, caption file or table) turned into an ordered list of inputs.

``read_source`` lists everything up front, sorted, so a run's order (and so its
shards) is the same every time: that is what makes a re-run resumable.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from clipkit.errors import ConfigurationError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
TEXT_FILE_EXTENSIONS = frozenset({".txt"})
TABLE_EXTENSIONS = frozenset({".parquet", ".pq", ".csv", ".tsv"})
PATH_COLUMNS = ("path", "url", "uri", "image", "image_path", "filepath", "file", "filename")
TEXT_COLUMNS = ("text", "caption", "prompt")


@attrs.frozen
class Inputs:
    """An ordered collection to embed: ``kind`` is ``"image"`` (``items`` are paths/URLs) or ``"text"`` (captions).

    ``ids`` name each input in the output (the path or URL for images; for
    texts the table's id column, else the 1-based line or row number), and
    ``storage_options`` are passed to fsspec for every image read.
    """

    kind: str
    items: tuple[str, ...]
    ids: tuple[str, ...]
    storage_options: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    def __len__(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        """SHA-256 of the kind, ids and items, in order: the identity a resumed run checks."""
        h = hashlib.sha256(self.kind.encode())
        for id_, item in zip(self.ids, self.items):
            h.update(b"\0" + id_.encode("utf-8", "surrogateescape") + b"\1" + item.encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def _extension(path: str) -> str:
    return posixpath.splitext(path.rstrip("/"))[1].lower()


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _url_to_fs(source: str, storage_options: Mapping[str, Any]) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(source, **storage_options)


def _unstrip(fs: Any, source: str, path: str) -> str:
    """A path ``fs`` listed, back in the caller's form: a URL when the source was one, else a local path."""
    return fs.unstrip_protocol(path) if "://" in source else path


def _list_images(source: str, storage_options: Mapping[str, Any]) -> list[str]:
    fs, root = _url_to_fs(source, storage_options)
    if _is_glob(source):
        found = fs.glob(root)
    elif fs.isdir(root):
        found = fs.find(root)
    elif _extension(source) in IMAGE_EXTENSIONS and fs.isfile(root):
        found = [root]
    elif not fs.exists(root):
        raise ConfigurationError(f"{source!r} does not exist; check the path (or the bucket and prefix)")
    else:
        raise ConfigurationError(
            f"{source!r} is not a folder, a glob, a caption file (.txt) or a table (.parquet/.csv); "
            "give one of these as SOURCE"
        )
    images = sorted(path for path in found if _extension(path) in IMAGE_EXTENSIONS)
    if not images:
        raise ConfigurationError(
            f"no images under {source!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); check the path"
        )
    return [_unstrip(fs, source, path) for path in images]


def _read_table(source: str, storage_options: Mapping[str, Any]) -> Any:
    from clipkit.batch.output import import_pyarrow

    import_pyarrow()
    import pyarrow.csv
    import pyarrow.parquet

    fs, path = _url_to_fs(source, storage_options)
    with fs.open(path, "rb") as handle:
        if _extension(source) in (".parquet", ".pq"):
            return pyarrow.parquet.read_table(handle)
        delimiter = "\t" if _extension(source) == ".tsv" else ","
        return pyarrow.csv.read_csv(handle, parse_options=pyarrow.csv.ParseOptions(delimiter=delimiter))


def _choose_column(names: Sequence[str], column: str | None, kind: str | None, source: str) -> tuple[str, str]:
    if column is not None:
        if column not in names:
            raise ConfigurationError(f"{source!r} has no column {column!r}; its columns are {', '.join(names)}")
        return column, kind or ("text" if column in TEXT_COLUMNS else "image")
    candidates = {"image": PATH_COLUMNS, "text": TEXT_COLUMNS}
    for candidate_kind in ([kind] if kind else ["image", "text"]):
        for name in candidates[candidate_kind]:
            if name in names:
                return name, candidate_kind
    raise ConfigurationError(
        f"cannot tell which column of {source!r} holds the inputs (columns: {', '.join(names)}); "
        "name it with --column (Python: column=...)"
    )


def _resolve_relative(item: str, table_source: str) -> str:
    if "://" in item or os.path.isabs(item):
        return item
    return posixpath.join(posixpath.dirname(table_source), item) if "://" in table_source else \
        os.path.join(os.path.dirname(os.path.abspath(table_source)), item)


def _from_table(source: str, storage_options: Mapping[str, Any], kind: str | None, column: str | None,
                id_column: str | None) -> Inputs:
    table = _read_table(source, storage_options)
    column, kind = _choose_column(table.column_names, column, kind, source)
    values = table.column(column).to_pylist()
    if any(value is None for value in values):
        raise ConfigurationError(f"column {column!r} of {source!r} has empty cells; fill or drop those rows")
    items = [str(value) for value in values]
    if kind == "image":
        items = [_resolve_relative(item, source) for item in items]
    if id_column is not None:
        if id_column not in table.column_names:
            raise ConfigurationError(f"{source!r} has no id column {id_column!r}; its columns are "
                                     f"{', '.join(table.column_names)}")
        ids = [str(value) for value in table.column(id_column).to_pylist()]
    else:
        ids = items if kind == "image" else [str(row + 1) for row in range(len(items))]
    return Inputs(kind, tuple(items), tuple(ids), dict(storage_options))


def read_source(
    source: str | os.PathLike[str],
    *,
    kind: str | None = None,
    column: str | None = None,
    id_column: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Inputs:
    """List the inputs of ``source`` in a stable order: the first step of every batch run.

    ``source`` is a local folder or an fsspec prefix (``s3://bucket/images/``;
    every image file below it, recursively, sorted), one image file, a glob
    (``photos/*.jpg``), a ``.txt`` file of captions (one per non-empty line), or
    a ``.parquet`` / ``.csv`` / ``.tsv`` table whose ``column`` (default: the
    first of ``path``, ``url``, ``image``, ... or ``text``, ``caption``) holds
    image paths/URLs (relative ones are taken from the table's folder) or
    captions. ``kind`` (``"image"``/``"text"``) says which is wanted when the
    source could be both. Raises ``ConfigurationError`` for a source that is none
    of these or holds nothing.
    """
    text = os.fspath(source)
    options = dict(storage_options or {})
    if kind not in (None, "image", "text"):
        raise ConfigurationError(f"kind must be 'image' or 'text', got {kind!r}")
    extension = _extension(text)
    if extension in TABLE_EXTENSIONS and not _is_glob(text):
        return _from_table(text, options, kind, column, id_column)
    if extension in TEXT_FILE_EXTENSIONS and not _is_glob(text):
        if kind == "image":
            raise ConfigurationError(f"{text!r} is a caption file; images come from a folder, a glob or a table")
        fs, path = _url_to_fs(text, options)
        with fs.open(path, "rt", encoding="utf-8") as handle:
            lines = [(number, line.strip()) for number, line in enumerate(handle, 1) if line.strip()]
        if not lines:
            raise ConfigurationError(f"{text!r} holds no captions (one per line expected)")
        return Inputs("text", tuple(line for _, line in lines), tuple(str(n) for n, _ in lines), options)
    if kind == "text":
        raise ConfigurationError(f"{text!r} is not a caption file (.txt) or a table; texts come from one of those")
    images = _list_images(text, options)
    return Inputs("image", tuple(images), tuple(images), options)
