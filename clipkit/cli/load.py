"""``clipkit load``: load a checkpoint, report what was built, and embed a test sentence."""

from __future__ import annotations

import argparse
import time

from clipkit.cli._args import add_source_args
from clipkit.fetching.redact import redact_url


def run(args: argparse.Namespace) -> int:
    """Load ``args.source``, print the model's size, dtype, device and resolution, and embed a sentence."""
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
    print(f"loaded {redact_url(args.source)} in {elapsed:.2f}s: {type(model).__name__}, {params / 1e6:.1f}M parameters, "
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``load`` subcommand to ``sub``."""
    p = sub.add_parser("load", help="load a checkpoint, report what was built, and embed a test sentence")
    add_source_args(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--jit", action="store_true", help="run the TorchScript archive itself")
    p.set_defaults(func=run)
