"""``clipkit export``: write a checkpoint in another format (TorchScript, ONNX, safetensors, transformers)."""

from __future__ import annotations

import argparse

from clipkit.cli._args import add_source_args

FORMATS = ("torchscript", "onnx", "safetensors", "transformers")  # clipkit.export.FORMATS, without importing torch here


def run(args: argparse.Namespace) -> int:
    """Load ``args.source`` (one tower only for ``--tower``) and write it to ``args.output`` in ``args.format``; print what was written.

    An existing output is refused unless ``--force`` (``--overwrite``) asks to replace it.
    """
    import torch

    from clipkit import export
    from clipkit.errors import ConfigurationError
    from clipkit.loader import load

    if args.tower and args.format != "onnx":
        raise ConfigurationError(f"--tower applies to --format onnx only; {args.format} exports the whole model")
    if (args.device or args.dtype) and args.format != "torchscript":
        raise ConfigurationError(f"--device and --dtype apply to --format torchscript only, not {args.format}")
    model, _ = load(args.source, device="cpu", download_root=args.download_root, sha256=args.sha256, tower=args.tower)
    if args.format == "onnx":
        for path in export.to_onnx(model, args.output, overwrite=args.force).values():
            print(path)
        return 0
    if args.format == "safetensors":
        print(export.to_safetensors(model, args.output, overwrite=args.force))
    elif args.format == "transformers":
        print(export.to_transformers(model, args.output, overwrite=args.force))
    else:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        print(export.to_torchscript(model, args.output, device=args.device, dtype=dtype, overwrite=args.force))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand to ``sub``."""
    p = sub.add_parser(
        "export",
        help="write a checkpoint as ONNX (per tower, verified), safetensors (+ spec sidecar), a transformers "
             "CLIPModel folder, or a release-shaped TorchScript archive",
    )
    add_source_args(p)
    p.add_argument("output", help="the file (torchscript, safetensors) or folder (onnx, transformers) to write")
    p.add_argument("--format", choices=FORMATS, default="torchscript",
                   help="torchscript (default): one .pt archive; onnx: image.onnx and text.onnx, each verified with "
                        "onnxruntime; safetensors: weights plus NAME.clipkit.json; transformers: a CLIPModel folder")
    p.add_argument("--force", "--overwrite", dest="force", action="store_true",
                   help="replace an existing output (file, sidecar or non-empty folder); it is swapped in only once "
                        "the new one is complete")
    p.add_argument("--tower", choices=("image", "text"), help="onnx: export this tower only (the other is never read)")
    p.add_argument("--device", default=None, help="torchscript: device to trace on (default: cpu)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                   help="torchscript: weights' precision in the archive (float16 gives a release-shaped archive)")
    p.set_defaults(func=run)
