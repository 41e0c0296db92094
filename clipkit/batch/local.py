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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(device: torch.device | None = None) -> int:
    """Worker processes when none are asked for: one per core (at most 8) when the model runs on an accelerator;
    on the CPU, where the model needs cores too, half of them (at least one)."""
    cores = usable_cores()
    if device is not None and device.type == "cpu":
        return max(1, min(8, cores // 2))
    return max(1, min(8, cores))


def model_threads(workers: int, threads: int | None) -> int:
    """Torch threads for a model on the CPU: ``threads`` if given, else the cores the workers leave (at least one).

    Torch's default, one thread per core, oversubscribes the cores the
    DataLoader workers decode on: an OpenMP thread spinning while its peer is
    descheduled costs more than the thread gains.
    """
    return threads if threads is not None else max(1, usable_cores() - workers)


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


def warm_transform(transform: Transform) -> None:
    """Run ``transform`` once on a tiny image in this process before the workers start.

    The default preprocessing imports PIL and torchvision (a second or more of
    CPU) and builds its pipeline on first use; done here, forked workers
    inherit both instead of each paying for them. A transform that fails on
    the dummy image is left to fail, per input, in the workers.
    """
    from PIL import Image

    try:
        transform(Image.new("RGB", (16, 16)))
    except Exception:  # noqa: BLE001 - only a warm-up: real inputs report their own failures
        pass


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
              workers: int | None, progress: bool, threads: int | None = None) -> None:
    """Compute every pending input of ``assembler`` with ``encoder``, ``workers`` processes preparing the batches.

    On the CPU the model runs on ``model_threads(workers, threads)`` torch
    threads for the run (the process's setting is restored after).
    """
    workers = default_workers(encoder.device) if workers is None else workers
    if inputs.kind == "text":
        workers = 0  # captions need no decoding: worker processes would only add start-up time
    if encoder.device.type != "cpu":
        _run_batches(encoder, inputs, assembler, batch_size=batch_size, workers=workers, progress=progress)
        return
    before = torch.get_num_threads()
    torch.set_num_threads(model_threads(workers, threads))
    try:
        _run_batches(encoder, inputs, assembler, batch_size=batch_size, workers=workers, progress=progress)
    finally:
        torch.set_num_threads(before)


def _run_batches(encoder: Encoder, inputs: Inputs, assembler: ShardAssembler, *, batch_size: int, workers: int,
                 progress: bool) -> None:
    from tqdm.auto import tqdm

    indices = assembler.pending_indices()
    if workers and inputs.kind == "image":
        warm_transform(encoder.per_image)
    loader = torch.utils.data.DataLoader(
        InputDataset(inputs, indices, encoder.per_image), batch_sampler=shard_aligned_batches(assembler, batch_size),
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
