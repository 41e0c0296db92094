"""``clipkit embed`` and ``clipkit classify``: a model over a whole collection, into Parquet shards."""

from __future__ import annotations

import argparse
import json
from typing import Any

MAX_ERRORS_SHOWN = 10


def _storage_options(pairs: list[str]) -> dict[str, Any]:
    from clipkit.errors import ConfigurationError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--storage-option takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _protocol(location: str) -> str | None:
    return location.split("://", 1)[0] if "://" in location else None


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    storage_options = _storage_options(args.storage_option)
    same_store = _protocol(args.out) is not None and _protocol(args.out) == _protocol(args.source)
    return dict(model=args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                workers=args.workers, threads=args.threads, shard_size=args.shard_size, engine=args.engine, address=args.address,
                actors=args.actors, progress=False if args.quiet else None, download_root=args.download_root,
                column=args.column, id_column=args.id_column, storage_options=storage_options,
                dest_storage_options=storage_options if same_store else {})


def _report(verb: str, result: Any) -> int:
    print(f"{verb} {result.inputs} inputs into {result.dest}: {len(result.written)} shard(s) written, "
          f"{len(result.skipped)} already there (skipped)")
    if result.score_kind:
        print(f"scores are {result.score_kind} probabilities")
    if result.errors:
        print(f"{len(result.errors)} could not be read (rows kept with a null embedding and the reason in 'error'):")
        for id_, reason in result.errors[:MAX_ERRORS_SHOWN]:
            print(f"  {id_}: {reason}")
        if len(result.errors) > MAX_ERRORS_SHOWN:
            print(f"  ... and {len(result.errors) - MAX_ERRORS_SHOWN} more")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    """Embed the images or captions of ``args.source`` into ``args.out``; print a summary."""
    from clipkit.batch import embed

    return _report("embedded", embed(args.source, args.out, kind=args.kind, **_run_options(args)))


def run_classify(args: argparse.Namespace) -> int:
    """Classify the images of ``args.source`` zero-shot into ``args.out``; print a summary."""
    from clipkit.batch import DEFAULT_TEMPLATES, classify
    from clipkit.errors import ConfigurationError

    labels = list(args.labels or []) + (_lines(args.labels_file) if args.labels_file else [])
    if not labels:
        raise ConfigurationError("give the classes with --labels cat dog ... or --labels-file FILE")
    templates = list(args.template or []) + (_lines(args.templates_file) if args.templates_file else [])
    result = classify(args.source, args.out, labels=labels, templates=templates or DEFAULT_TEMPLATES,
                      top_k=args.top_k, **_run_options(args))
    return _report("classified", result)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a folder, a glob, an fsspec URL (s3://bucket/prefix/), or a .parquet/.csv table")
    p.add_argument("--out", required=True, help="output folder (local or fsspec URL) for part-NNNNN.parquet shards")
    p.add_argument("--model", default="ViT-B/32", help="anything clipkit.load takes (default: ViT-B/32)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="model precision (default: fp16 on CUDA)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per model call (default: 64)")
    p.add_argument("--workers", type=int,
                   help="DataLoader processes decoding images (default: one per core, up to 8)")
    p.add_argument("--threads", type=int,
                   help="torch threads for the model on the CPU (default: chosen by measurement, the cores the workers leave or torch's own setting)")
    p.add_argument("--shard-size", type=int, default=10_000, help="inputs per output shard (default: 10000)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local (default) or ray (clipkit[ray])")
    p.add_argument("--address", help="with --engine ray: the cluster to join (default: start a local Ray instance)")
    p.add_argument("--actors", type=int, help="with --engine ray: model replicas (default: one per GPU, else half the CPUs)")
    p.add_argument("--column", help="the table column holding image paths/URLs or captions")
    p.add_argument("--id-column", help="the table column to use as each row's id (default: the path or row number)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option for reading SOURCE (and writing --out on the same store), "
                        "e.g. endpoint_url=http://localhost:9000 (repeatable)")
    p.add_argument("--download-root", help="model cache directory (default: $CLIPKIT_CACHE or ~/.cache/clip)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``embed`` and ``classify`` subcommands to ``sub``."""
    p = sub.add_parser("embed", help="embed a collection of images or captions into Parquet")
    _common(p)
    p.add_argument("--kind", choices=["image", "text"], help="what SOURCE holds, when a table could be either")
    p.set_defaults(func=run_embed)

    p = sub.add_parser("classify", help="classify a collection of images zero-shot into Parquet (top-k labels)")
    _common(p)
    p.add_argument("--labels", nargs="+", help="the class names")
    p.add_argument("--labels-file", help="a file of class names, one per line")
    p.add_argument("--template", action="append", help="a prompt template with {} for the label (repeatable: "
                   "the templates are ensembled; default 'a photo of a {}.')")
    p.add_argument("--templates-file", help="a file of prompt templates, one per line")
    p.add_argument("--top-k", type=int, default=5, help="labels kept per image (default: 5)")
    p.set_defaults(func=run_classify)
