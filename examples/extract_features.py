"""Embed images and/or lines of text with a CLIP model and save the L2-normalised features.

Images are given as files or folders (searched recursively for image files);
texts as a file with one text a line. Features are computed in batches without
gradients on the chosen device and dtype, normalised to unit length in float32,
and saved with the names they belong to:

- ``.pt``  a ``torch.save`` dict: ``image_features [N, D]``, ``image_paths``,
  ``text_features [M, D]``, ``texts``, ``model`` (read back with
  ``torch.load(path, weights_only=True)``);
- ``.npz`` the same keys as NumPy arrays (names as unicode arrays);
- ``.npy`` one feature matrix (images or texts, not both) plus a ``.txt`` file
  beside it with one name a line, in row order.

Examples::

    python examples/extract_features.py photos/ --output photos.pt
    python examples/extract_features.py a.jpg b.jpg --texts captions.txt --output feats.npz --model RN50
    python examples/extract_features.py photos/ --output photos.npy --device cuda --dtype float16 --batch-size 256
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import clipkit

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
OUTPUT_SUFFIXES = (".pt", ".npz", ".npy")


def find_images(inputs: Iterable[Path]) -> list[Path]:
    """Every image file named in ``inputs``; folders are searched recursively, in sorted order."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            sys.exit(f"no such file or folder: {item}")
    return found


class ImageFiles(torch.utils.data.Dataset):
    """Image files opened with PIL and passed through the model's ``preprocess``."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.preprocess(image)


def normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, in float32 on the CPU."""
    features = features.float().cpu()
    return features / features.norm(dim=-1, keepdim=True)


@torch.no_grad()
def embed_images(
    model: torch.nn.Module, preprocess: Callable[[Any], torch.Tensor], paths: Sequence[Path],
    device: torch.device, batch_size: int, num_workers: int,
) -> torch.Tensor:
    """Normalised image features ``[len(paths), D]``; decoding and preprocessing run in ``num_workers`` processes."""
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, preprocess), batch_size=batch_size, num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    chunks = [normalise(model.encode_image(batch.to(device, non_blocking=True))) for batch in loader]
    return torch.cat(chunks)


@torch.no_grad()
def embed_texts(model: torch.nn.Module, texts: Sequence[str], device: torch.device, batch_size: int) -> torch.Tensor:
    """Normalised text features ``[len(texts), D]``; texts longer than the model's context are truncated.

    The tokenizer is the model's own (``clipkit.get_tokenizer``): OpenAI's BPE for CLIP, SentencePiece for SigLIP.
    """
    tokenizer = clipkit.get_tokenizer(model)
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start : start + batch_size])
        chunks.append(normalise(model.encode_text(tokens.to(device))))
    return torch.cat(chunks)


def save(output: Path, model_name: str, results: dict[str, tuple[list[str], torch.Tensor]]) -> list[Path]:
    """Write ``{"image"|"text": (names, features)}`` to ``output`` in the format its suffix names; return the files written."""
    name_keys = {"image": "image_paths", "text": "texts"}
    if output.suffix == ".pt":
        payload: dict[str, Any] = {"model": model_name}
        for kind, (names, features) in results.items():
            payload[f"{kind}_features"] = features
            payload[name_keys[kind]] = names
        torch.save(payload, output)
        return [output]
    if output.suffix == ".npz":
        arrays: dict[str, np.ndarray] = {"model": np.array(model_name)}
        for kind, (names, features) in results.items():
            arrays[f"{kind}_features"] = features.numpy()
            arrays[name_keys[kind]] = np.array(names, dtype=str)
        np.savez(output, **arrays)
        return [output]
    (names, features), = results.values()
    np.save(output, features.numpy())
    sidecar = output.with_suffix(".txt")
    sidecar.write_text("".join(f"{name}\n" for name in names))
    return [output, sidecar]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: inputs, output, batching, model, device and dtype."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="image files and/or folders")
    parser.add_argument("--texts", type=Path, help="a text file: one text to embed per line")
    parser.add_argument("--output", "-o", type=Path, required=True, help="where to save: .pt, .npz or .npy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes (default 0: in-process)")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="weights' dtype (default: float16 on CUDA, float32 otherwise)")
    parser.add_argument("--model", default="ViT-B/32", help="official name, checkpoint path or URL (default ViT-B/32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--download-root", help="checkpoint cache directory")
    args = parser.parse_args(argv)
    if not args.images and not args.texts:
        parser.error("give image files/folders, --texts, or both")
    if args.output.suffix not in OUTPUT_SUFFIXES:
        parser.error(f"--output must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if args.output.suffix == ".npy" and args.images and args.texts:
        parser.error(".npy holds one matrix: give images or texts, not both (or use .pt / .npz)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Embed the inputs and save the features with their names."""
    args = parse_args(argv)
    paths = find_images(args.images)
    if args.images and not paths:
        sys.exit(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, args.images))}")
    texts = [line.strip() for line in args.texts.read_text().splitlines() if line.strip()] if args.texts else []
    if args.texts and not texts:
        sys.exit(f"{args.texts} has no non-empty lines")

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    model, preprocess = clipkit.load(args.model, device=args.device, download_root=args.download_root, dtype=dtype)
    device = next(model.parameters()).device

    results: dict[str, tuple[list[str], torch.Tensor]] = {}
    if paths:
        results["image"] = ([str(p) for p in paths],
                            embed_images(model, preprocess, paths, device, args.batch_size, args.num_workers))
    if texts:
        results["text"] = (texts, embed_texts(model, texts, device, args.batch_size))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    written = save(args.output, args.model, results)
    for kind, (names, features) in results.items():
        print(f"{kind}: {len(names)} x {features.shape[1]} features")
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    try:
        main()
    except clipkit.errors.ClipkitError as exc:  # a bad source, device or checkpoint: say what, not where
        sys.exit(f"{type(exc).__name__}: {exc}")
