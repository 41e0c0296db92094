"""``clipkit export``: write a checkpoint in another format (TorchScript archive)."""

from __future__ import annotations

import argparse

from clipkit.cli._args import add_source_args


def run(args: argparse.Namespace) -> int:
    """Trace ``args.source`` into a release-shaped TorchScript archive at ``args.output``; print its path."""
    import torch

    from clipkit.jit import export_torchscript
    from clipkit.loader import load

    model, _ = load(args.source, device="cpu", download_root=args.download_root, sha256=args.sha256)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    print(export_torchscript(model, args.output, device=args.device, dtype=dtype))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand to ``sub``."""
    p = sub.add_parser("export", help="trace a checkpoint into a TorchScript archive shaped like the official releases")
    add_source_args(p)
    p.add_argument("output", help="where to write the archive (.pt)")
    p.add_argument("--device", default=None, help="device to trace on (default: cpu)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                   help="weights' precision in the archive (float16 gives a release-shaped archive)")
    p.set_defaults(func=run)
