"""Where a batch run writes: Parquet shards in a DEST folder (local or fsspec), each written whole or not at all.

Inputs are cut into shards of ``shard_size`` consecutive inputs;
shard ``k`` is ``DEST/part-<k:05d>.parquet`` with one row per input. A
``DEST/_manifest.json`` written first records what the run computes (inputs,
model, task); a re-run with the same manifest skips every shard already there,
and one that would compute something else into the same DEST is refused.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clipkit.errors import ConfigurationError

MANIFEST = "_manifest.json"
SHARD_NAME = "part-{:05d}.parquet"
SCHEMA_METADATA_KEY = b"clipkit"


def import_pyarrow() -> Any:
    """``pyarrow``, or a ``ConfigurationError`` naming the extra that installs it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"batch embedding writes Parquet through pyarrow, which is not installed ({exc}); "
            "pip install 'clipkit[batch]'"
        ) from None
    return pyarrow


def schema(kind: str, dim: int, *, classify: bool, metadata: Mapping[str, Any]) -> Any:
    """The output table's schema: ``index``, ``id``, (``text``), ``embedding``, ``error`` (+ ``labels``, ``scores``, ``score_kind``).

    ``embedding`` is a fixed-size list of ``dim`` float32 (L2-normalised), null
    where ``error`` says why that input was skipped; ``metadata`` (the manifest)
    is stored as JSON under the schema's ``clipkit`` key.
    """
    pa = import_pyarrow()
    fields = [pa.field("index", pa.int64(), nullable=False), pa.field("id", pa.string(), nullable=False)]
    if kind == "text":
        fields.append(pa.field("text", pa.string(), nullable=False))
    fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    if classify:
        fields += [pa.field("labels", pa.list_(pa.string())), pa.field("scores", pa.list_(pa.float32())),
                   pa.field("score_kind", pa.string())]
    fields.append(pa.field("error", pa.string()))
    return pa.schema(fields, metadata={SCHEMA_METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)})


class ShardStore:
    """The DEST folder of one run: its manifest, which shards exist, and atomic shard writes.

    ``dest`` is a local path or an fsspec URL. Locally a shard is written to a
    hidden temporary name and renamed into place; on object stores the upload
    itself is atomic (an object appears only once it is complete).
    """

    def __init__(self, dest: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.dest = os.fspath(dest)
        self.fs, self.root = fsspec.core.url_to_fs(self.dest, **dict(storage_options or {}))
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def shard_path(self, shard: int) -> str:
        """Where shard ``shard`` lives (as ``self.fs`` names it)."""
        return self._path(SHARD_NAME.format(shard))

    def open_run(self, manifest: Mapping[str, Any]) -> None:
        """Start or resume the run that ``manifest`` describes; ``ConfigurationError`` if DEST holds another."""
        path = self._path(MANIFEST)
        if self.fs.exists(path):
            with self.fs.open(path, "rt") as handle:
                existing = json.load(handle)
            if existing != json.loads(json.dumps(dict(manifest))):
                changed = sorted(k for k in set(existing) | set(manifest) if existing.get(k) != manifest.get(k))
                raise ConfigurationError(
                    f"{self.dest} holds the output of a different run (differs in: {', '.join(changed)}); "
                    "write to another --out folder, or delete this one to start over"
                )
            self._remove_temporaries()
            return
        if self.fs.exists(self.root) and self.fs.ls(self.root):
            raise ConfigurationError(
                f"{self.dest} exists and is not a clipkit output folder (no {MANIFEST}); choose an empty or new folder"
            )
        self.fs.makedirs(self.root, exist_ok=True)
        self._write_bytes(MANIFEST, json.dumps(dict(manifest), indent=2, sort_keys=True).encode())

    def _remove_temporaries(self) -> None:
        """Drop the temporary files of shards an interrupted run was writing (local DEST only)."""
        if self.local:
            for path in self.fs.ls(self.root, detail=False):
                name = posixpath_name(path)
                if name.startswith(".part-") and name.endswith(".tmp"):
                    self.fs.rm(path)

    def done(self, shards: int) -> set[int]:
        """The shard numbers below ``shards`` already written by an earlier run."""
        present = {posixpath_name(p) for p in self.fs.ls(self.root, detail=False)} if self.fs.exists(self.root) else set()
        return {k for k in range(shards) if SHARD_NAME.format(k) in present}

    def _write_bytes(self, name: str, data: bytes) -> None:
        final = self._path(name)
        if not self.local:
            with self.fs.open(final, "wb") as handle:
                handle.write(data)
            return
        temporary = self._path(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def write_shard(self, shard: int, table: Any) -> None:
        """Write ``table`` as shard ``shard``, whole or not at all."""
        pa = import_pyarrow()
        sink = pa.BufferOutputStream()
        pa.parquet.write_table(table, sink)
        self._write_bytes(SHARD_NAME.format(shard), sink.getvalue().to_pybytes())

    def read(self) -> Any:
        """Every shard written so far, concatenated in input order, as one ``pyarrow.Table``."""
        pa = import_pyarrow()
        names = sorted(p for p in self.fs.ls(self.root, detail=False) if posixpath_name(p).startswith("part-"))
        tables = []
        for name in names:
            with self.fs.open(name, "rb") as handle:
                tables.append(pa.parquet.read_table(handle))
        return pa.concat_tables(tables) if tables else None


def posixpath_name(path: str) -> str:
    """The last component of a path an fsspec filesystem listed."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def build_table(schema_: Any, rows: Mapping[str, Sequence[Any]], embeddings: np.ndarray, valid: np.ndarray) -> Any:
    """One shard's ``pyarrow.Table``: ``rows`` holds every column but ``embedding``, given as ``[n, dim]`` float32.

    ``valid`` marks the rows whose embedding is real; the others are null.
    """
    pa = import_pyarrow()
    dim = schema_.field("embedding").type.list_size
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1), type=pa.float32())
    mask = pa.array(~np.asarray(valid, dtype=bool))
    embedding = pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)
    columns = {name: (embedding if name == "embedding" else pa.array(rows[name], type=schema_.field(name).type))
               for name in schema_.names}
    return pa.Table.from_pydict(columns, schema=schema_)
