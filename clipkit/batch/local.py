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


def default_workers() -> int:
    """Worker processes when none are asked for: one per core, at most 8."""
    return max(1, min(8, usable_cores()))


class ThreadGovernor:
    """Torch threads for a model on the CPU during a run: whichever of two settings gives more images per second.

    ``low`` is the cores the workers leave; ``high`` is torch's own setting
    (one thread per core). Which is faster depends on the model: when it costs
    less than decoding, its extra OpenMP threads spin against the workers and
    ``low`` wins; when it costs more, the workers sleep on a full queue and
    ``high`` wins. So the governor measures: it runs ``TRIAL`` batches with
    each, keeps the one with more images per wall-clock second (waiting for
    inputs included), and tries the other again every ``RETRY`` batches.
    ``threads`` fixes the setting. ``restore`` puts back the process's own.
    """

    TRIAL, RETRY = 2, 50

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.before = torch.get_num_threads()
        self.high = threads or self.before
        self.low = threads or max(1, min(self.before, usable_cores() - workers))
        self.current = 0
        self.best = self.low
        self.batches = 0
        self.started = False
        self.window: dict[int, list[float]] = {self.low: [0.0, 0.0], self.high: [0.0, 0.0]}
        self.use(self.low)

    def use(self, count: int) -> None:
        if count != self.current:
            torch.set_num_threads(count)
            self.current = count

    def rate(self, count: int) -> float:
        images, seconds = self.window[count]
        return images / seconds if seconds else 0.0

    def after_batch(self, images: int, seconds: float) -> None:
        """Count a batch of ``images`` that took ``seconds`` (waiting for it included); choose the next setting."""
        if self.low == self.high:
            return
        if not self.started:  # the first batch waited for the pipeline to fill: it says nothing about either
            self.started = True
            return
        window = self.window[self.current]
        window[0] += images
        window[1] += seconds
        self.batches += 1
        phase = self.batches % self.RETRY
        if phase == self.TRIAL:  # the current best has had its trial: try the other
            self.use(self.high if self.best == self.low else self.low)
        elif phase == 2 * self.TRIAL:  # both measured over the same stretch: keep the faster, start afresh
            self.best = max((self.low, self.high), key=self.rate)
            self.window = {self.low: [0.0, 0.0], self.high: [0.0, 0.0]}
            self.use(self.best)

    def restore(self) -> None:
        torch.set_num_threads(self.before)


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

    On the CPU the model's torch threads follow a ``ThreadGovernor`` (or
    ``threads``, when given) for the run; the process's setting is restored after.
    """
    workers = default_workers() if workers is None else workers
    if inputs.kind == "text":
        workers = 0  # captions need no decoding: worker processes would only add start-up time
    governor = ThreadGovernor(workers, threads) if encoder.device.type == "cpu" else None
    try:
        _run_batches(encoder, inputs, assembler, batch_size=batch_size, workers=workers, progress=progress,
                     governor=governor)
    finally:
        if governor is not None:
            governor.restore()


def _forks() -> bool:
    """Whether DataLoader workers start by ``fork`` (and so inherit what this process imported)."""
    import multiprocessing

    return (multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]) == "fork"


def _run_batches(encoder: Encoder, inputs: Inputs, assembler: ShardAssembler, *, batch_size: int, workers: int,
                 progress: bool, governor: ThreadGovernor | None) -> None:
    import time

    from tqdm.auto import tqdm

    indices = assembler.pending_indices()
    if workers and inputs.kind == "image" and _forks():
        warm_transform(encoder.per_image)
    loader = torch.utils.data.DataLoader(
        InputDataset(inputs, indices, encoder.per_image), batch_sampler=shard_aligned_batches(assembler, batch_size),
        num_workers=workers,
        collate_fn=collate, pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    unit = "img" if inputs.kind == "image" else "text"
    with tqdm(total=len(indices), unit=unit, desc="clipkit", disable=not progress, smoothing=0.05) as bar:
        batches = iter(loader)
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            batch_indices, payload, errors = batch
            result = encode_batch(encoder, inputs.kind, payload, errors)
            assembler.add(batch_indices, result.pop("embeddings"), errors, **result)
            if governor is not None:
                governor.after_batch(len(batch_indices), time.perf_counter() - started)
            bar.update(len(batch_indices))
            if assembler.errors:
                bar.set_postfix(errors=len(assembler.errors), refresh=False)
