"""Text-to-image and image-to-image search over a folder of images with CLIP embeddings.

``index`` embeds every image under the given folders and saves the normalised
embeddings, their paths and the model they came from to one ``.pt`` file.
``query`` loads that index (and the same model), embeds a text or an image, and
prints the ``k`` nearest images by cosine similarity, best first.

Examples::

    python examples/similarity_search.py index photos/ --index photos.idx.pt --model ViT-B/32
    python examples/similarity_search.py query --index photos.idx.pt --text "a dog on a beach" -k 5
    python examples/similarity_search.py query --index photos.idx.pt --image query.jpg --json

The index is read back with ``torch.load(..., weights_only=True)``: it holds
only tensors, strings and numbers, never pickled code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import clipkit

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
INDEX_FORMAT = 1


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


def model_reference(source: str) -> str:
    """``source`` as the index should remember it: local paths made absolute, names and URLs as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if "://" not in source and path.exists() else source


def normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, in float32 on the CPU."""
    features = features.float().cpu()
    return features / features.norm(dim=-1, keepdim=True)


def open_rgb(path: Path) -> Image.Image | None:
    """The image at ``path`` as RGB, or ``None`` (with a warning) when PIL cannot read it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        print(f"skipping {path}: {exc}", file=sys.stderr)
        return None


@torch.no_grad()
def embed_images(
    model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor], paths: Sequence[Path], batch_size: int
) -> tuple[list[Path], torch.Tensor]:
    """The readable ``paths`` and their normalised embeddings ``[n, D]``, ``batch_size`` images at a time."""
    device = next(model.parameters()).device
    kept: list[Path] = []
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            image = open_rgb(path)
            if image is not None:
                batch.append(preprocess(image))
                kept.append(path)
        if batch:
            chunks.append(normalise(model.encode_image(torch.stack(batch).to(device))))
    if not chunks:
        sys.exit("none of the images could be read")
    return kept, torch.cat(chunks)


@torch.no_grad()
def embed_text(model: torch.nn.Module, text: str) -> torch.Tensor:
    """The normalised embedding ``[D]`` of one text (truncated to the model's context length)."""
    device = next(model.parameters()).device
    tokens = clipkit.get_tokenizer(model)([text]).to(device)  # the model's own tokenizer, truncating
    return normalise(model.encode_text(tokens))[0]


def build_index(args: argparse.Namespace) -> None:
    """The ``index`` command: embed the images and save the index file."""
    paths = find_images(args.folders)
    if not paths:
        sys.exit(f"no image files found in {', '.join(map(str, args.folders))}")
    model, preprocess = clipkit.load(args.model, device=args.device, download_root=args.download_root)
    paths, features = embed_images(model, preprocess, paths, args.batch_size)
    index = {
        "format": INDEX_FORMAT,
        "model": model_reference(args.model),
        "paths": [str(p.resolve()) for p in paths],
        "features": features,
    }
    args.index.parent.mkdir(parents=True, exist_ok=True)
    torch.save(index, args.index)
    print(f"indexed {len(paths)} images ({features.shape[1]}-d) with {args.model} into {args.index}")


def load_index(path: Path) -> dict[str, Any]:
    """Read an index written by ``build_index`` (tensors and strings only: ``weights_only=True``)."""
    if not path.is_file():
        sys.exit(f"no index at {path}; build one with: similarity_search.py index FOLDER --index {path}")
    index = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        sys.exit(f"{path} is not an index written by this script (format {INDEX_FORMAT})")
    return index


def search(index_features: torch.Tensor, query: torch.Tensor, k: int) -> tuple[list[float], list[int]]:
    """The ``k`` best (cosine score, row) pairs of ``index_features [N, D]`` for a unit ``query [D]``, best first."""
    scores = index_features @ query
    top = scores.topk(min(k, scores.numel()))
    return top.values.tolist(), top.indices.tolist()


def run_query(args: argparse.Namespace) -> None:
    """The ``query`` command: embed the text or image, print the nearest indexed images."""
    index = load_index(args.index)
    source = args.model or index["model"]
    model, preprocess = clipkit.load(source, device=args.device, download_root=args.download_root)
    if args.text is not None:
        query = embed_text(model, args.text)
    else:
        query = embed_images(model, preprocess, [args.image], batch_size=1)[1][0]
    features: torch.Tensor = index["features"]
    if query.shape[0] != features.shape[1]:
        sys.exit(f"the model gives {query.shape[0]}-d embeddings but the index holds {features.shape[1]}-d ones; "
                 f"query with the model it was built with ({index['model']})")
    scores, rows = search(features, query, args.k)
    for rank, (score, row) in enumerate(zip(scores, rows), start=1):
        if args.json:
            print(json.dumps({"rank": rank, "score": score, "path": index["paths"][row]}))
        else:
            print(f"{rank:3d}  {score:+.4f}  {index['paths'][row]}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: ``index`` and ``query`` subcommands."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--index", type=Path, required=True, help="the index file (.pt)")
        sub.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
        sub.add_argument("--download-root", help="checkpoint cache directory")

    build = commands.add_parser("index", help="embed the images of folders into an index file")
    build.add_argument("folders", nargs="+", type=Path, help="folders (searched recursively) or image files")
    build.add_argument("--model", default="ViT-B/32", help="official name, checkpoint path or URL (default ViT-B/32)")
    build.add_argument("--batch-size", type=int, default=64)
    common(build)

    ask = commands.add_parser("query", help="find the indexed images nearest to a text or an image")
    what = ask.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="a text query")
    what.add_argument("--image", type=Path, help="an image query")
    ask.add_argument("-k", type=int, default=5, help="results to print (default 5)")
    ask.add_argument("--model", help="override the model recorded in the index")
    ask.add_argument("--json", action="store_true", help="print one JSON object per result")
    common(ask)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch to ``index`` or ``query``."""
    args = parse_args(argv)
    build_index(args) if args.command == "index" else run_query(args)


if __name__ == "__main__":
    try:
        main()
    except clipkit.errors.ClipkitError as exc:  # a bad source, device or checkpoint: say what, not where
        sys.exit(f"{type(exc).__name__}: {exc}")
