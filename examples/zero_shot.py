"""Zero-shot image classification with any CLIP checkpoint clipkit can load.

Each label becomes one or more sentences ("a photo of a {}."), the text encoder
embeds them (with the model's own tokenizer, ``clipkit.get_tokenizer``), and
every image is assigned the label whose (averaged, normalised) text embedding
is closest to the image's embedding. With ``--ensemble`` each label is
described by several prompt templates and their embeddings are averaged, the
prompt-ensembling recipe of the CLIP paper.

The first line says what the scores are. CLIP's are a softmax over the given
labels (they sum to 1). A model trained with a sigmoid loss (SigLIP: it has a
``logit_bias``) scores every label on its own, ``sigmoid(scale * cos + bias)``:
independent probabilities that need not sum to 1 (none may be high).

Examples::

    python examples/zero_shot.py                      # scikit-image's sample photos, default labels
    python examples/zero_shot.py cat.jpg dog.jpg --labels cat dog "a bird" --top-k 2
    python examples/zero_shot.py photos/*.jpg --labels-file labels.txt --ensemble --model RN50
    python examples/zero_shot.py img.png --model ./my_finetune.pt --device cpu --json

Without image arguments it classifies a few of the photos bundled with
scikit-image (``pip install scikit-image``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

import clipkit

DEFAULT_LABELS = (
    "cat",
    "dog",
    "cup of coffee",
    "astronaut",
    "rocket",
    "horse",
    "motorcycle",
    "coins",
)
DEFAULT_TEMPLATE = "a photo of a {}."
# A short ensemble in the spirit of the CLIP paper's ImageNet prompts.
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of the {}.",
    "a cropped photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "art of the {}.",
    "a {} in a video game.",
)
SAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")


def sample_photos() -> list[Path]:
    """Paths of a few photos bundled with scikit-image (a cat, a coffee cup, an astronaut, a rocket)."""
    try:
        import skimage.data
    except ImportError:
        sys.exit("no images given and scikit-image is not installed: pass image paths or `pip install scikit-image`")
    return [Path(skimage.data.data_dir) / name for name in SAMPLE_PHOTOS]


@torch.no_grad()
def class_embeddings(
    model: torch.nn.Module, labels: Sequence[str], templates: Sequence[str], device: torch.device
) -> torch.Tensor:
    """One unit vector per label: the normalised mean of its prompts' normalised text embeddings, ``[labels, dim]``."""
    tokenizer = clipkit.get_tokenizer(model)  # the model's own: OpenAI's BPE, SigLIP's SentencePiece, ...
    rows = []
    for label in labels:
        prompts = [template.format(label) for template in templates]
        tokens = tokenizer(prompts).to(device)
        features = model.encode_text(tokens).float()
        features = features / features.norm(dim=-1, keepdim=True)
        mean = features.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


@torch.no_grad()
def image_embeddings(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    paths: Sequence[Path],
    device: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """Normalised image embeddings ``[images, dim]`` in float32, computed ``batch_size`` images at a time."""
    chunks = []
    for start in range(0, len(paths), batch_size):
        pixels = []
        for path in paths[start : start + batch_size]:
            with Image.open(path) as image:
                pixels.append(preprocess(image))
        features = model.encode_image(torch.stack(pixels).to(device)).float()
        chunks.append(features / features.norm(dim=-1, keepdim=True))
    return torch.cat(chunks)


def logit_scale(model: torch.nn.Module) -> float:
    """The model's learned temperature (``logit_scale.exp()``), or CLIP's usual 100 when the model has none."""
    scale = getattr(model, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0


def label_scores(model: torch.nn.Module, images: torch.Tensor, classifier: torch.Tensor) -> tuple[torch.Tensor, str]:
    """``([images, labels] scores, kind)``: ``"softmax"`` over the labels, or ``"sigmoid"`` per label for a model
    with a ``logit_bias`` (trained with a sigmoid loss, as SigLIP)."""
    logits = logit_scale(model) * images @ classifier.T
    bias = getattr(model, "logit_bias", None)
    if isinstance(bias, torch.Tensor):
        return torch.sigmoid(logits + bias.detach().float().to(logits.device)), "sigmoid"
    return logits.softmax(dim=-1), "softmax"


SCORE_NOTES = {
    "softmax": "scores: softmax over the {} labels (they sum to 1)",
    "sigmoid": "scores: sigmoid, an independent probability per label (the model has a logit_bias; they need not sum to 1)",
}


def read_labels(args: argparse.Namespace) -> list[str]:
    """Labels from ``--labels-file`` (one a line) or ``--labels``, else the defaults."""
    if args.labels_file:
        labels = [line.strip() for line in Path(args.labels_file).read_text().splitlines() if line.strip()]
    else:
        labels = list(args.labels or DEFAULT_LABELS)
    if len(labels) < 2:
        sys.exit("give at least two labels to choose between")
    return labels


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: images, labels, prompts, model and device."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="image files (default: scikit-image sample photos)")
    parser.add_argument("--labels", nargs="+", help=f"class names (default: {', '.join(DEFAULT_LABELS)})")
    parser.add_argument("--labels-file", help="a text file with one class name a line")
    parser.add_argument("--template", action="append",
                        help=f"prompt template with {{}} for the label; repeat to ensemble (default {DEFAULT_TEMPLATE!r})")
    parser.add_argument("--ensemble", action="store_true",
                        help=f"average {len(ENSEMBLE_TEMPLATES)} built-in prompt templates per label")
    parser.add_argument("--top-k", type=int, default=3, help="labels to print per image (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image with every probability and its kind (softmax/sigmoid)")
    parser.add_argument("--model", default="ViT-B/32", help="official name, checkpoint path or URL (default ViT-B/32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--download-root", help="checkpoint cache directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Load the model, embed labels and images, print each image's top-k labels with probabilities."""
    args = parse_args(argv)
    labels = read_labels(args)
    templates = list(args.template or (ENSEMBLE_TEMPLATES if args.ensemble else [DEFAULT_TEMPLATE]))
    if args.ensemble and args.template:
        templates = [*templates, *ENSEMBLE_TEMPLATES]
    bad = [t for t in templates if "{}" not in t]
    if bad:
        sys.exit(f"prompt templates need a {{}} where the label goes: {bad}")
    paths = list(args.images) or sample_photos()

    model, preprocess = clipkit.load(args.model, device=args.device, download_root=args.download_root)
    device = next(model.parameters()).device
    classifier = class_embeddings(model, labels, templates, device)
    images = image_embeddings(model, preprocess, paths, device, args.batch_size)
    probs, kind = label_scores(model, images, classifier)
    probs = probs.cpu()

    k = min(args.top_k, len(labels))
    if not args.json:
        print(SCORE_NOTES[kind].format(len(labels)))
    for path, row in zip(paths, probs):
        if args.json:
            print(json.dumps({"image": str(path), "score": kind, "probs": dict(zip(labels, row.tolist()))}))
            continue
        values, indices = row.topk(k)
        ranked = ", ".join(f"{labels[i]} {p:.4f}" for p, i in zip(values.tolist(), indices.tolist()))
        print(f"{path.name}: {ranked}")


if __name__ == "__main__":
    try:
        main()
    except clipkit.errors.ClipkitError as exc:  # a bad source, device or checkpoint: say what, not where
        sys.exit(f"{type(exc).__name__}: {exc}")
