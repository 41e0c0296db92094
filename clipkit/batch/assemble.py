"""Collecting per-input results, in any order, into whole shards written the moment they are complete."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clipkit.batch.output import ShardStore, build_table, schema
from clipkit.batch.sources import Inputs


class ShardAssembler:
    """Buffers results by shard and writes each shard (one row per input, in input order) once all its rows are in.

    Shard ``k`` covers inputs ``k * shard_size`` up to the next multiple; the
    shards already in ``store`` are left alone, and ``pending_indices`` lists the
    inputs still to compute.
    """

    def __init__(self, store: ShardStore, inputs: Inputs, shard_size: int, *, classify: bool,
                 metadata: Mapping[str, Any]) -> None:
        self.store, self.inputs, self.shard_size = store, inputs, shard_size
        self.classify, self.metadata = classify, dict(metadata)
        self.shards = -(-len(inputs) // shard_size)
        done = store.done(self.shards)
        self.skipped = sorted(done)
        self.pending = [k for k in range(self.shards) if k not in done]
        self._buffers: dict[int, dict[int, tuple[Any, ...]]] = {}
        self._schema: Any = None
        self.written: list[int] = []
        self.errors: list[tuple[str, str]] = []
        self.score_kind: str | None = None

    def shard_range(self, shard: int) -> range:
        """The input indices shard ``shard`` covers."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.inputs)))

    def pending_indices(self) -> list[int]:
        """Every input index whose shard is not written yet, in order."""
        return [index for shard in self.pending for index in self.shard_range(shard)]

    def add(self, indices: Sequence[int], embeddings: np.ndarray, errors: Sequence[str | None],
            labels: Sequence[Any] | None = None, scores: Sequence[Any] | None = None,
            score_kind: str | None = None) -> None:
        """Record one batch: ``embeddings[i]`` for input ``indices[i]`` (ignored where ``errors[i]`` is a reason).

        With classification, ``labels[i]`` / ``scores[i]`` are that row's top-k
        and ``score_kind`` says what the scores are. Writes every shard this
        batch completes.
        """
        if self._schema is None:
            self.score_kind = score_kind
            self._schema = schema(self.inputs.kind, int(embeddings.shape[1]), classify=self.classify,
                                  metadata=self.metadata)
        touched = set()
        for row, index in enumerate(indices):
            index = int(index)
            shard = index // self.shard_size
            entry = (embeddings[row], errors[row], labels[row] if labels is not None else None,
                     scores[row] if scores is not None else None)
            self._buffers.setdefault(shard, {})[index] = entry
            touched.add(shard)
        for shard in sorted(touched):
            if len(self._buffers[shard]) == len(self.shard_range(shard)):
                self._write(shard, self._buffers.pop(shard))

    def _write(self, shard: int, rows: dict[int, tuple[Any, ...]]) -> None:
        order = sorted(rows)
        dim = self._schema.field("embedding").type.list_size
        embeddings = np.zeros((len(order), dim), dtype=np.float32)
        valid = np.zeros(len(order), dtype=bool)
        columns: dict[str, list[Any]] = {"index": order, "id": [self.inputs.ids[i] for i in order], "error": []}
        if self.inputs.kind == "text":
            columns["text"] = [self.inputs.items[i] for i in order]
        if self.classify:
            columns.update(labels=[], scores=[], score_kind=[])
        for row, index in enumerate(order):
            embedding, error, labels, scores = rows[index]
            columns["error"].append(error)
            if error is None:
                embeddings[row], valid[row] = embedding, True
            else:
                self.errors.append((self.inputs.ids[index], error))
            if self.classify:
                columns["labels"].append(None if error else list(labels))
                columns["scores"].append(None if error else [float(s) for s in scores])
                columns["score_kind"].append(self.score_kind)
        self.store.write_shard(shard, build_table(self._schema, columns, embeddings, valid))
        self.written.append(shard)

    def finish(self) -> None:
        """Check that every pending shard was written; an engine that lost rows is a bug, said loudly."""
        written = set(self.written)
        missing = [shard for shard in self.pending if shard not in written]
        if missing:
            raise RuntimeError(f"shards {missing} did not receive all their rows; nothing was written for them")
