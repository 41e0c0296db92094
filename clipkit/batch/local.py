"""The local engine: a torch DataLoader whose worker processes read, decode and preprocess; the model in this process.

Batches arrive in input order, so shards complete (and are written) one after
another; an interrupted run loses at most the shard in progress.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clipkit.batch.assemble import ShardAssembler
from clipkit.batch.compute import Encoder
from clipkit.batch.images import Transform, load_pixels
from clipkit.batch.sources import Inputs


def default_workers() -> int:
    """Worker processes when none are asked for: one per CPU core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


class InputDataset(torch.utils.data.Dataset):
    """``inputs`` at ``indices`` as ``(index, pixels or caption, error)``; a bad image gives ``(index, None, reason)``."""

    def __init__(self, inputs: Inputs, indices: Sequence[int], transform: Transform) -> None:
        self.inputs, self.indices, self.transform = inputs, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Any, str | None]:
        index = self.indices[position]
        if self.inputs.kind == "text":
            return index, self.inputs.items[index], None
        pixels, error = load_pixels(self.inputs.items[index], self.inputs.storage_options, self.transform)
        return index, pixels, error


def collate(items: Sequence[tuple[int, Any, str | None]]) -> tuple[list[int], Any, list[str | None]]:
    """One batch: all indices, the good inputs (a stacked tensor for images, a list for captions), each row's error."""
    good = [payload for _, payload, error in items if error is None]
    if good and isinstance(good[0], torch.Tensor):
        good = torch.stack(good)
    return [index for index, _, _ in items], good, [error for _, _, error in items]


def encode_batch(encoder: Encoder, kind: str, payload: Any, errors: Sequence[str | None]) -> dict[str, Any]:
    """Embed (and classify) a batch's good inputs and spread the results over all its rows (zeros where an error)."""
    ok = np.array([error is None for error in errors], dtype=bool)
    embeddings = np.zeros((len(errors), encoder.dim), dtype=np.float32)
    labels: list[Any] = [None] * len(errors)
    scores: list[Any] = [None] * len(errors)
    if ok.any():
        features = encoder.encode_images(payload) if kind == "image" else encoder.encode_texts(payload)
        result = encoder.outputs(features)
        embeddings[ok] = result["embedding"]
        for row, position in enumerate(np.flatnonzero(ok)):
            if encoder.labels:
                labels[position], scores[position] = result["labels"][row], result["scores"][row]
    if not encoder.labels:
        return {"embeddings": embeddings}
    return {"embeddings": embeddings, "labels": labels, "scores": scores, "score_kind": encoder.score_kind}


def shard_aligned_batches(assembler: ShardAssembler, batch_size: int) -> list[list[int]]:
    """Positions in ``pending_indices`` cut into batches that never straddle two shards.

    A shard's rows are then computed in the same batches whether it is written
    in a first run or in a resumed one, so a resumed run's table is bit-identical.
    """
    batches, position = [], 0
    for shard in assembler.pending:
        size = len(assembler.shard_range(shard))
        batches += [list(range(start, min(start + batch_size, position + size)))
                    for start in range(position, position + size, batch_size)]
        position += size
    return batches


def run_local(encoder: Encoder, inputs: Inputs, assembler: ShardAssembler, *, batch_size: int,
              workers: int | None, progress: bool) -> None:
    """Compute every pending input of ``assembler`` with ``encoder``, ``workers`` processes preparing the batches."""
    from tqdm.auto import tqdm

    indices = assembler.pending_indices()
    workers = default_workers() if workers is None else workers
    if inputs.kind == "text":
        workers = 0  # captions need no decoding: worker processes would only add start-up time
    loader = torch.utils.data.DataLoader(
        InputDataset(inputs, indices, encoder.preprocess), batch_sampler=shard_aligned_batches(assembler, batch_size),
        num_workers=workers,
        collate_fn=collate, pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    unit = "img" if inputs.kind == "image" else "text"
    with tqdm(total=len(indices), unit=unit, desc="clipkit", disable=not progress, smoothing=0.05) as bar:
        for batch_indices, payload, errors in loader:
            result = encode_batch(encoder, inputs.kind, payload, errors)
            assembler.add(batch_indices, result.pop("embeddings"), errors, **result)
            bar.update(len(batch_indices))
            if assembler.errors:
                bar.set_postfix(errors=len(assembler.errors), refresh=False)
