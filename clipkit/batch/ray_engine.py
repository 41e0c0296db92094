"""The Ray engine: Ray Data reads the files, CPU tasks decode and preprocess, actors run the model.

(On a cluster without GPUs the model actors are CPU actors, and each decodes
its own batches: moving decoded pixels between processes that share the same
CPUs would only add copies.)

Each actor calls ``clipkit.load`` once; the actors of one node share clipkit's
cache and its per-file lock, so the weights are downloaded once per node. The
actors ask for a GPU each when the cluster has GPUs, else they run on CPUs.
Results stream back to the driver, which writes the same shards as the local
engine (``ShardAssembler``), so resuming works the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from clipkit.batch.assemble import ShardAssembler
from clipkit.batch.compute import Encoder
from clipkit.batch.images import Transform, decode, failure_reason
from clipkit.batch.sources import Inputs
from clipkit.errors import ConfigurationError

MISSING = "FileNotFoundError: the file was not found when Ray Data listed the inputs"
INSPECT_KEYWORDS = frozenset({"download_root", "sha256", "storage_options"})
READ_CPUS = 0.25  # what a file-reading task asks for: it mostly waits on I/O


def import_ray() -> Any:
    """``ray`` with Ray Data, or a ``ConfigurationError`` naming the extra that installs them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); pip install 'clipkit[ray]'"
        ) from None
    return ray


def decode_batch(batch: Mapping[str, np.ndarray], transform: Transform, side: int) -> dict[str, np.ndarray]:
    """A Ray Data batch of files (``bytes``, ``path``) → ``path``, ``pixels`` (zeros where bad) and ``error`` ("" if none)."""
    tensors: list[torch.Tensor | None] = []
    errors = []
    for data in batch["bytes"]:
        try:
            tensors.append(decode(bytes(data), transform))
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - one bad file is that row's error, never the run's
            tensors.append(None)
            errors.append(failure_reason(exc))
    shape = next((tuple(t.shape) for t in tensors if t is not None), (3, side, side))
    pixels = np.zeros((len(tensors), *shape), dtype=np.float32)
    for row, tensor in enumerate(tensors):
        if tensor is not None:
            pixels[row] = tensor.numpy()
    return {"path": np.asarray(batch["path"], dtype=object), "pixels": pixels, "error": np.asarray(errors, dtype=object)}


class RayEncoder:
    """The stateful ``map_batches`` class: one ``Encoder`` (one ``clipkit.load``) per actor."""

    def __init__(self, model: str, device: str | None, dtype: str | None, load_kwargs: Mapping[str, Any],
                 labels: Sequence[str] | None, templates: Sequence[str], top_k: int, threads: int | None,
                 transform: Transform | None = None, side: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.encoder = Encoder(model, device=device, dtype=dtype, load_kwargs=load_kwargs, labels=labels,
                               templates=templates, top_k=top_k)
        self.transform, self.side = transform, side

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed a batch of ``pixels`` (rows with an ``error`` get zeros) or of ``text``; classify when asked to.

        Given a ``transform``, the actor decodes raw files (``bytes``) itself first.
        """
        if "bytes" in batch:
            batch = decode_batch(batch, self.transform, self.side)
        out = {key: batch[key] for key in batch if key not in ("pixels", "text")}
        if "text" in batch:
            features = self.encoder.encode_texts([str(text) for text in batch["text"]])
        else:
            ok = np.asarray([not error for error in batch["error"]], dtype=bool)
            features = torch.zeros((len(ok), self.encoder.dim), device=self.encoder.device)
            if ok.any():
                features[torch.from_numpy(ok).to(features.device)] = self.encoder.encode_images(
                    torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        out["embedding"] = features.cpu().numpy().astype(np.float32)
        if self.encoder.labels:
            values, indices = self.encoder.scores(features).topk(self.encoder.top_k, dim=-1)
            out["label_index"], out["score"] = indices.cpu().numpy(), values.cpu().numpy().astype(np.float32)
            out["score_kind"] = np.asarray([self.encoder.score_kind] * len(features), dtype=object)
        return out


def _transform_for(options: Any) -> tuple[Transform, int]:
    """The model's preprocess, built on the driver from the checkpoint's spec (the model itself only if it must)."""
    from clipkit.loader import inspect, load, make_transform

    kwargs = dict(options.load_kwargs)
    if set(kwargs) <= INSPECT_KEYWORDS:
        spec = inspect(options.model, **kwargs)
        return make_transform(spec), int(spec.image_resolution)
    _, preprocess = load(options.model, device="cpu", **kwargs)  # overrides can change the transform
    return preprocess, 0


def _filesystem(items: Sequence[str], storage_options: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """One pyarrow filesystem for all ``items`` (None for local paths) and the paths as it names them."""
    import fsspec

    protocols = {item.split("://", 1)[0] if "://" in item else "file" for item in items}
    if len(protocols) != 1:
        raise ConfigurationError(f"--engine ray reads from one filesystem per run; these inputs mix {sorted(protocols)}")
    if protocols == {"file"}:
        import os

        return None, [os.path.abspath(item.removeprefix("file://")) for item in items]
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = fsspec.core.url_to_fs(items[0], **dict(storage_options))
    return PyFileSystem(FSSpecHandler(fs)), [fsspec.core.strip_protocol(item) for item in items]


def _cluster(ray: Any, address: str | None) -> bool:
    """Join ``address`` (or whatever ``ray.init`` finds), unless this process is already connected; True if we did."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def _actors(ray: Any, options: Any) -> tuple[dict[str, Any], str | None]:
    """``map_batches`` resources for the model actors and their device.

    With GPUs in the cluster: one GPU per actor, one actor per GPU by default.
    Without: CPU actors (half the CPUs by default) sharing all CPUs but the
    ``READ_CPUS`` kept for the file-reading tasks, so actors can never take every
    CPU and starve the reads that feed them.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        size = options.actors or gpus
        return {"compute": ray.data.ActorPoolStrategy(size=size), "num_gpus": 1}, options.device or "cuda"
    cpus = float(ray.cluster_resources().get("CPU", 1))
    size = options.actors or max(1, int(cpus) // 2)
    share = min(1.0, (cpus - READ_CPUS) / size)
    if share <= 0:
        raise ConfigurationError(f"a Ray cluster with {cpus:g} CPUs cannot run {size} model actors and read files")
    return {"compute": ray.data.ActorPoolStrategy(size=size), "num_cpus": share}, options.device or "cpu"


def run_ray(inputs: Inputs, assembler: ShardAssembler, options: Any, *, labels: Sequence[str] | None,
            templates: Sequence[str], top_k: int, progress: bool) -> None:
    """Compute every pending input of ``assembler`` on a Ray cluster (``options.address``, else a local instance)."""
    ray = import_ray()
    started = _cluster(ray, options.address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        indices = assembler.pending_indices()
        compute, device = _actors(ray, options)
        constructor = dict(model=options.model, device=device, dtype=options.dtype, load_kwargs=options.load_kwargs,
                           labels=labels, templates=templates, top_k=top_k,
                           threads=(options.threads or max(1, int(compute.get("num_cpus", 0))))
                           if device == "cpu" else None)
        if inputs.kind == "text":
            dataset = ray.data.from_items([{"index": i, "text": inputs.items[i]} for i in indices])
            by_key = {i: [i] for i in indices}
            key = "index"
        else:
            transform, side = _transform_for(options)
            filesystem, paths = _filesystem([inputs.items[i] for i in indices], inputs.storage_options)
            by_key: dict[Any, list[int]] = {}
            for index, path in zip(indices, paths):
                by_key.setdefault(path, []).append(index)
            dataset = ray.data.read_binary_files(list(by_key), include_paths=True, filesystem=filesystem,
                                                 ignore_missing_paths=True, num_cpus=READ_CPUS)
            if device == "cpu":  # CPU actors decode their own batches: the same CPUs, no pixels shipped between them
                constructor.update(transform=transform, side=side)
            else:
                dataset = dataset.map_batches(decode_batch, fn_kwargs={"transform": transform, "side": side},
                                              batch_size=options.batch_size, batch_format="numpy", num_cpus=1)
            key = "path"
        dataset = dataset.map_batches(RayEncoder, fn_constructor_kwargs=constructor, batch_size=options.batch_size,
                                      batch_format="numpy", **compute)
        _collect(dataset, assembler, by_key, key, labels)
    finally:
        if started:
            ray.shutdown()


def _collect(dataset: Any, assembler: ShardAssembler, by_key: Mapping[Any, list[int]], key: str,
             labels: Sequence[str] | None) -> None:
    seen: set[Any] = set()
    dim = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        rows = [(row, index) for row, k in enumerate(batch[key]) for index in by_key[_plain(k)]]
        seen.update(_plain(k) for k in batch[key])
        take = [row for row, _ in rows]
        dim = batch["embedding"].shape[1]
        errors = [str(batch["error"][row]) or None for row in take] if "error" in batch else [None] * len(take)
        kwargs: dict[str, Any] = {}
        if labels:
            kwargs = {"labels": [[labels[i] for i in batch["label_index"][row]] for row in take],
                      "scores": [batch["score"][row].tolist() for row in take],
                      "score_kind": str(batch["score_kind"][0])}
        assembler.add([index for _, index in rows], batch["embedding"][take], errors, **kwargs)
    missing = [index for k, found in by_key.items() if k not in seen for index in found]
    if missing and not dim:
        raise ConfigurationError(f"none of the {len(missing)} inputs was found by Ray Data; check the paths")
    if missing:
        assembler.add(missing, np.zeros((len(missing), dim or 1), dtype=np.float32), [MISSING] * len(missing))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
