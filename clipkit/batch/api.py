"""The batch API: ``embed_images``, ``embed_texts`` and ``classify`` over a SOURCE into Parquet shards in DEST."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from clipkit.batch.assemble import ShardAssembler
from clipkit.batch.compute import DEFAULT_TEMPLATES, check_templates
from clipkit.batch.output import ShardStore, import_pyarrow
from clipkit.batch.sources import Inputs, read_source
from clipkit.errors import ConfigurationError

ENGINES = ("local", "ray")
MANIFEST_VERSION = 1


@attrs.frozen
class BatchResult:
    """What a batch run did: where it wrote, how many inputs and shards, which it skipped as done, and the errors.

    ``errors`` lists ``(id, reason)`` for the inputs of the shards written by
    this run that could not be read or decoded (their rows have a null
    ``embedding`` and the reason in ``error``). ``score_kind`` is ``"softmax"``
    or ``"sigmoid"`` for a classification, else ``None``.
    """

    dest: str
    inputs: int
    shards: int
    written: tuple[int, ...]
    skipped: tuple[int, ...]
    errors: tuple[tuple[str, str], ...]
    score_kind: str | None = None

    def read(self) -> Any:
        """The whole output as one ``pyarrow.Table`` in input order."""
        return ShardStore(self.dest).read()


@attrs.frozen(kw_only=True)
class RunOptions:
    """How to run: the model and where it runs, batch and shard sizes, the engine and its settings."""

    model: str
    device: str | None = None
    dtype: str | None = None
    batch_size: int = 64
    workers: int | None = None
    threads: int | None = None
    shard_size: int = 10_000
    engine: str = "local"
    address: str | None = None
    actors: int | None = None
    progress: bool | None = None
    load_kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    dest_storage_options: Mapping[str, Any] = attrs.field(factory=dict)


def _check(options: RunOptions) -> None:
    if options.engine not in ENGINES:
        raise ConfigurationError(f"engine must be one of {', '.join(ENGINES)}, got {options.engine!r}")
    for name in ("batch_size", "shard_size"):
        if getattr(options, name) < 1:
            raise ConfigurationError(f"{name} must be at least 1, got {getattr(options, name)}")
    if options.workers is not None and options.workers < 0:
        raise ConfigurationError(f"workers must be 0 or more, got {options.workers}")
    if options.threads is not None and options.threads < 1:
        raise ConfigurationError(f"threads must be at least 1, got {options.threads}")
    if options.dtype not in (None, "float32", "float16", "bfloat16"):
        raise ConfigurationError(f"dtype must be float32, float16 or bfloat16, got {options.dtype!r}")


def _run(inputs: Inputs, dest: str | os.PathLike[str], options: RunOptions, *, task: Mapping[str, Any]) -> BatchResult:
    _check(options)
    import_pyarrow()
    if options.engine == "ray":
        from clipkit.batch.ray_engine import import_ray

        import_ray()  # before anything is written to dest
    manifest = {"clipkit_batch": MANIFEST_VERSION, "kind": inputs.kind, "count": len(inputs),
                "inputs_sha256": inputs.digest(), "shard_size": options.shard_size, "model": str(options.model),
                "dtype": options.dtype, **task}
    store = ShardStore(dest, storage_options=options.dest_storage_options)
    store.open_run(manifest)
    assembler = ShardAssembler(store, inputs, options.shard_size, classify="labels" in task, metadata=manifest)
    progress = options.progress if options.progress is not None else _stderr_is_terminal()
    labels = task.get("labels")
    templates = task.get("templates", DEFAULT_TEMPLATES)
    top_k = task.get("top_k", 0)
    if assembler.pending and options.engine == "local":
        from clipkit.batch.compute import Encoder
        from clipkit.batch.local import run_local

        encoder = Encoder(options.model, device=options.device, dtype=options.dtype, load_kwargs=options.load_kwargs,
                          labels=labels, templates=templates, top_k=top_k)
        run_local(encoder, inputs, assembler, batch_size=options.batch_size, workers=options.workers,
                  threads=options.threads, progress=progress)
    elif assembler.pending:
        from clipkit.batch.ray_engine import run_ray

        run_ray(inputs, assembler, options, labels=labels, templates=templates, top_k=top_k, progress=progress)
    assembler.finish()
    return BatchResult(store.dest, len(inputs), assembler.shards, tuple(assembler.written), tuple(assembler.skipped),
                       tuple(assembler.errors), assembler.score_kind)


def _stderr_is_terminal() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _options(model: str | os.PathLike[str], kwargs: dict[str, Any]) -> RunOptions:
    load_kwargs = dict(kwargs.pop("load_kwargs", None) or {})
    load_kwargs.update({name: kwargs.pop(name) for name in ("download_root", "sha256", "jit") if name in kwargs})
    dtype = kwargs.pop("dtype", None)
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    try:
        return RunOptions(model=os.fspath(model), dtype=dtype, load_kwargs=load_kwargs, **kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"unknown option: {exc}") from None


def embed(source: str | os.PathLike[str], dest: str | os.PathLike[str], *, model: str | os.PathLike[str],
          kind: str | None = None, column: str | None = None, id_column: str | None = None,
          storage_options: Mapping[str, Any] | None = None, **options: Any) -> BatchResult:
    """Embed images or captions, whichever ``source`` holds (``kind`` says which when it could be both).

    A ``.txt`` file or a table's text column gives captions (``embed_texts``);
    anything else gives images (``embed_images``); the options are theirs.
    """
    inputs = read_source(source, kind=kind, column=column, id_column=id_column, storage_options=storage_options)
    return _run(inputs, dest, _options(model, options), task={"task": "embed"})


def embed_images(source: str | os.PathLike[str], dest: str | os.PathLike[str], *, model: str | os.PathLike[str],
                 column: str | None = None, id_column: str | None = None,
                 storage_options: Mapping[str, Any] | None = None, **options: Any) -> BatchResult:
    """Embed every image of ``source`` with ``model`` into Parquet shards in ``dest``; return what was done.

    ``source`` is a folder, a glob, an fsspec URL prefix, or a Parquet/CSV table
    with a path/URL ``column`` (see ``read_source``); ``storage_options`` are
    fsspec's for reading it. ``dest`` gets ``part-NNNNN.parquet`` files with
    ``index``, ``id`` (the path or URL, or ``id_column``), ``embedding``
    (L2-normalised float32, fixed size) and ``error`` (why an unreadable image
    was skipped; its embedding is null). Run options: ``device``, ``dtype``
    (``"float16"``...), ``batch_size`` (64), ``workers`` (DataLoader processes
    decoding images; default one per core, up to 8), ``threads`` (the
    model's torch threads on the CPU, fixed; by default chosen by measurement
    between the cores the workers leave and torch's own setting),
    ``shard_size`` (10 000 inputs), ``engine`` (``"local"`` or ``"ray"``, with
    ``address`` and ``actors``), ``progress``; ``download_root``, ``sha256``,
    ``jit`` and ``load_kwargs`` go to ``clipkit.load``. Re-running into the
    same ``dest`` skips the shards already written.
    """
    return embed(source, dest, model=model, kind="image", column=column, id_column=id_column,
                 storage_options=storage_options, **options)


def embed_texts(source: str | os.PathLike[str] | Sequence[str], dest: str | os.PathLike[str], *,
                model: str | os.PathLike[str], column: str | None = None, id_column: str | None = None,
                storage_options: Mapping[str, Any] | None = None, **options: Any) -> BatchResult:
    """Embed captions into Parquet shards in ``dest``: from a ``.txt`` file (one per line), a table's text ``column``, or a list.

    The output has ``index``, ``id`` (line/row number from 1, or ``id_column``),
    ``text``, ``embedding`` and ``error``; the options are ``embed_images``'.
    Each caption is tokenized with the model's own tokenizer
    (``clipkit.get_tokenizer``), truncated to its context length.
    """
    if isinstance(source, (list, tuple)):
        inputs = Inputs("text", tuple(map(str, source)), tuple(str(n) for n in range(1, len(source) + 1)))
        return _run(inputs, dest, _options(model, options), task={"task": "embed"})
    return embed(source, dest, model=model, kind="text", column=column, id_column=id_column,
                 storage_options=storage_options, **options)


def classify(source: str | os.PathLike[str], dest: str | os.PathLike[str], *, model: str | os.PathLike[str],
             labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES, top_k: int = 5,
             column: str | None = None, id_column: str | None = None,
             storage_options: Mapping[str, Any] | None = None, **options: Any) -> BatchResult:
    """Classify every image of ``source`` zero-shot among ``labels``; write embeddings and top-k labels to ``dest``.

    Each label is put into every prompt template (``"a photo of a {}."`` by
    default; several templates are ensembled: their normalised text embeddings
    averaged). Rows get ``labels`` and ``scores`` (the ``top_k`` best, best
    first) and ``score_kind``: ``"softmax"`` (a distribution over ``labels``)
    or ``"sigmoid"`` (independent per-label probabilities, for models with a
    ``logit_bias`` such as SigLIP). Sources and options as ``embed_images``.
    """
    labels = [str(label) for label in labels]
    if not labels or len(set(labels)) != len(labels):
        raise ConfigurationError("classify needs at least one label, each given once")
    if top_k < 1:
        raise ConfigurationError(f"top_k must be at least 1, got {top_k}")
    task = {"task": "classify", "labels": labels, "templates": list(check_templates(templates)),
            "top_k": min(top_k, len(labels))}
    inputs = read_source(source, kind="image", column=column, id_column=id_column, storage_options=storage_options)
    return _run(inputs, dest, _options(model, options), task=task)
