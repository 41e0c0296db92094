"""The ``clipkit`` command: list models and plugins, inspect, fetch, load and export checkpoints."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from clipkit.errors import ClipkitError


def _common_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a model name, a local path, or a URL (https://, s3://, file://, ...)")
    parser.add_argument("--download-root", help="cache directory (default: $CLIPKIT_CACHE or ~/.cache/clip)")
    parser.add_argument("--sha256", help="expected SHA-256 of the checkpoint file")


def _cmd_models(args: argparse.Namespace) -> int:
    from clipkit.loader import registered_models

    for name, source in registered_models().items():
        print(f"{name}\t{source.url}" if args.urls else name)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from clipkit.loader import inspect

    spec = inspect(args.source, download_root=args.download_root, sha256=args.sha256)
    if args.json:
        print(json.dumps({"class": type(spec).__name__, **spec.to_dict()}, indent=2))
    else:
        print(repr(spec))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from clipkit.plugins import get_registry

    infos = get_registry().infos()
    if args.json:
        print(json.dumps([{"name": i.name, "origin": i.origin, "hooks": list(i.hooks), "error": i.error} for i in infos], indent=2))
        return 0
    for info in infos:
        if info.error and info.error.startswith("disabled"):
            print(f"{info.name}  [{info.origin}]  {info.error}")
        elif info.error:
            print(f"{info.name}  [{info.origin}]  FAILED: {info.error}")
        else:
            print(f"{info.name}  [{info.origin}]  {', '.join(info.hooks)}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    import os

    from clipkit import fetching
    from clipkit.loader import cache_dir, registered_models, resolve_source

    if args.quiet:
        os.environ["CLIPKIT_PROGRESS"] = "0"
    source, sha256 = args.source, args.sha256
    if args.verify or args.force:
        entry = registered_models().get(source)
        if entry is not None:
            source, sha256 = entry.url, sha256 or entry.sha256
        if fetching.is_fsspec_url(source):
            print(fetching.fetch(source, cache_dir=cache_dir(args.download_root), sha256=sha256,
                                 force_verify=args.verify, force_download=args.force))
            return 0
    print(resolve_source(source, download_root=args.download_root, sha256=sha256))
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    import torch

    from clipkit.loader import load

    start = time.perf_counter()
    model, preprocess = load(args.source, device=args.device, jit=args.jit, download_root=args.download_root,
                             sha256=args.sha256)
    elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters())
    visual = getattr(model, "visual", None)
    resolution = getattr(visual, "input_resolution", None)
    if resolution is None:  # TorchScript archives keep it as a buffer on the model
        resolution = getattr(model, "input_resolution", "?")
    print(f"loaded {args.source} in {elapsed:.2f}s: {type(model).__name__}, {params / 1e6:.1f}M parameters, "
          f"{first.dtype} on {first.device}, input resolution {int(resolution)}")
    from clipkit.tokenizer import get_tokenizer, tokenize

    if int(model.vocab_size) < len(get_tokenizer().encoder):
        print(f"text tower has its own {int(model.vocab_size)}-token vocabulary: no test sentence embedded")
        return 0
    tokens = tokenize(["a photo of a cat"], context_length=int(model.context_length)).to(first.device)
    with torch.no_grad():
        text = model.encode_text(tokens)
    print(f"text embedding: shape {tuple(text.shape)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from clipkit.jit import export_torchscript
    from clipkit.loader import load

    model, _ = load(args.source, device="cpu", download_root=args.download_root, sha256=args.sha256)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    print(export_torchscript(model, args.output, device=args.device, dtype=dtype))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``clipkit`` and its subcommands."""
    parser = argparse.ArgumentParser(prog="clipkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model names clipkit.load accepts")
    p.add_argument("--urls", action="store_true", help="also print each model's URL")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("inspect", help="print the architecture (ArchSpec) of a checkpoint without building it")
    _common_source_args(p)
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("plugins", help="list registered plugins, where they came from, and their hooks")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("fetch", help="download and verify a checkpoint into the cache; print its path")
    _common_source_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--verify", action="store_true", help="hash the cached file even if clipkit verified it before")
    p.add_argument("--force", action="store_true", help="download again even if the file is cached")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("load", help="load a checkpoint, report what was built, and embed a test sentence")
    _common_source_args(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--jit", action="store_true", help="run the TorchScript archive itself")
    p.set_defaults(func=_cmd_load)

    p = sub.add_parser("export", help="trace a checkpoint into a TorchScript archive shaped like the official releases")
    _common_source_args(p)
    p.add_argument("output", help="where to write the archive (.pt)")
    p.add_argument("--device", default=None, help="device to trace on (default: cpu)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                   help="weights' precision in the archive (float16 gives a release-shaped archive)")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``clipkit`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    clipkit's own errors print one clear line on stderr and exit with status 2.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ClipkitError as exc:
        print(f"clipkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
