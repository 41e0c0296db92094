"""Linear-probe evaluation of a CLIP image encoder, following the CLIP paper's recipe.

1. Embed every image with the frozen image encoder (``model.encode_image``).
2. Fit an L2-regularised multinomial logistic regression on the training
   features with L-BFGS, for each inverse regularisation strength ``C`` of a
   sweep, scoring each on a validation split held out of the training set.
3. Refit on train + validation with the best ``C`` and report the accuracy on
   the test split, which no step above has seen.

The classifier is plain torch (``torch.optim.LBFGS`` on
``C * sum(cross_entropy) + ||W||^2 / 2``, scikit-learn's objective), so no
scikit-learn is needed.

Data: ``--data DIR`` in ImageFolder layout (``DIR/<class>/<image>``), split
into train/test by ``--test-fraction``; or ``DIR/train/<class>/...`` and
``DIR/test/<class>/...`` used as given. Without ``--data``, a small synthetic
task is made from scikit-image's photos: random crops, flips and colour jitter
of each photo, one class per photo, so the script runs anywhere.

Examples::

    python examples/linear_probe.py                              # synthetic task, ViT-B/32
    python examples/linear_probe.py --data ~/datasets/flowers --model RN50 --device cuda
    python examples/linear_probe.py --c-values 0.01 0.1 1 10 --report probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

import clipkit

SYNTHETIC_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "horse.png", "motorcycle_left.png")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


class Dataset:
    """Labelled images: ``names[i]`` (a path or a synthetic id), ``labels[i]`` and ``image(i) -> PIL.Image``."""

    def __init__(self, classes: list[str], names: list[str], labels: list[int], image: Callable[[int], Any]) -> None:
        self.classes, self.names, self.labels, self.image = classes, names, labels, image

    def __len__(self) -> int:
        return len(self.names)


def image_folder(root: Path, classes: list[str] | None = None) -> Dataset:
    """An ImageFolder-layout directory (``root/<class>/<image>``) as a ``Dataset``; ``classes`` fixes the label order."""
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    classes = classes or found
    names, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            names.append(str(path))
            labels.append(label)
    if not names:
        sys.exit(f"no images found under {root}/<class>/ (ImageFolder layout expected)")

    def load(i: int) -> Image.Image:
        with Image.open(names[i]) as img:
            return img.convert("RGB")

    return Dataset(classes, names, labels, load)


def synthetic_dataset(views: int, seed: int) -> Dataset:
    """``views`` random crops/flips/colour jitters of each of a few scikit-image photos, one class per photo."""
    try:
        import skimage.data
    except ImportError:
        sys.exit("the synthetic task needs scikit-image (`pip install scikit-image`); or pass --data DIR")
    from torchvision import transforms

    augment = transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.25, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
    ])
    torch.manual_seed(seed)  # torchvision's random transforms draw from the global generator
    classes, names, labels, images = [], [], [], []
    for label, filename in enumerate(SYNTHETIC_PHOTOS):
        cls = Path(filename).stem
        classes.append(cls)
        with Image.open(Path(skimage.data.data_dir) / filename) as photo:
            photo = photo.convert("RGB")
            for v in range(views):
                images.append(augment(photo))
                names.append(f"{cls}/view{v:03d}")
                labels.append(label)
    return Dataset(classes, names, labels, images.__getitem__)


def stratified_split(labels: Sequence[int], fraction: float, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """Split indices into (kept, held_out), holding out ``fraction`` of each class (at least one if it has two)."""
    kept, held = [], []
    for cls in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == cls]
        order = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
        n_held = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        held += order[:n_held]
        kept += order[n_held:]
    return sorted(kept), sorted(held)


@torch.no_grad()
def features(model: torch.nn.Module, preprocess: Callable[[Any], torch.Tensor], data: Dataset,
             device: torch.device, batch_size: int) -> torch.Tensor:
    """Image-encoder features ``[len(data), D]`` (float32, CPU), as the paper's probes use them: unnormalised."""
    chunks = []
    for start in range(0, len(data), batch_size):
        batch = torch.stack([preprocess(data.image(i)) for i in range(start, min(start + batch_size, len(data)))])
        chunks.append(model.encode_image(batch.to(device)).float().cpu())
    return torch.cat(chunks)


class SoftmaxRegression:
    """Multinomial logistic regression with an L2 penalty on the weights, fit by L-BFGS (scikit-learn's objective).

    Minimises ``C * sum_i CE(x_i W + b, y_i) + ||W||^2 / 2`` (the bias is not
    penalised), scaled by ``1 / (C n)`` for conditioning, in float64.
    """

    def __init__(self, C: float, max_iter: int = 1000) -> None:
        self.C, self.max_iter = C, max_iter
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def fit(self, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> SoftmaxRegression:
        """Fit on features ``x [n, d]`` and integer labels ``y [n]``; returns ``self``."""
        x = x.double()
        weight = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=self.max_iter, history_size=20,
                                      tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")
        penalty = 1.0 / (2.0 * self.C * x.shape[0])

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + penalty * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted class indices for features ``x [n, d]``."""
        if self.weight is None:
            raise RuntimeError("call fit() first")
        return (x.double() @ self.weight + self.bias).argmax(dim=1)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``predicted`` equal to ``labels``."""
    return (predicted == labels).double().mean().item()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: data, splits, the C sweep, model and device."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="ImageFolder root (default: a synthetic task from scikit-image photos)")
    parser.add_argument("--views", type=int, default=24, help="images per class of the synthetic task (default 24)")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of each class held out for testing")
    parser.add_argument("--val-fraction", type=float, default=0.25,
                        help="share of each training class held out to choose C")
    parser.add_argument("--c-values", type=float, nargs="+", default=[10.0**e for e in range(-4, 5)],
                        help="inverse regularisation strengths to sweep (default 1e-4 ... 1e4, one per decade)")
    parser.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--report", type=Path, help="also write the splits, sweep and test predictions as JSON here")
    parser.add_argument("--model", default="ViT-B/32", help="official name, checkpoint path or URL (default ViT-B/32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--download-root", help="checkpoint cache directory")
    args = parser.parse_args(argv)
    for name in ("test_fraction", "val_fraction"):
        if not 0.0 < getattr(args, name) < 1.0:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if any(c <= 0 for c in args.c_values):
        parser.error("--c-values must be positive")
    return args


def load_splits(args: argparse.Namespace, generator: torch.Generator) -> tuple[Dataset, list[int], list[int]]:
    """The dataset and its (train, test) indices: given folders, a stratified split, or the synthetic task's split."""
    if args.data is None:
        data = synthetic_dataset(args.views, args.seed)
    elif (args.data / "train").is_dir() and (args.data / "test").is_dir():
        train = image_folder(args.data / "train")
        test = image_folder(args.data / "test", classes=train.classes)
        n = len(train)
        combined = Dataset(train.classes, train.names + test.names, train.labels + test.labels,
                           lambda i: train.image(i) if i < n else test.image(i - n))
        return combined, list(range(n)), list(range(n, n + len(test)))
    else:
        data = image_folder(args.data)
    train, test = stratified_split(data.labels, args.test_fraction, generator)
    return data, train, test


def main(argv: Sequence[str] | None = None) -> None:
    """Extract features, sweep C on the validation split, refit, and report test accuracy."""
    args = parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    data, train_idx, test_idx = load_splits(args, generator)
    if len(data.classes) < 2:
        sys.exit("a linear probe needs at least two classes")
    fit_local, val_local = stratified_split([data.labels[i] for i in train_idx], args.val_fraction, generator)
    fit_idx, val_idx = [train_idx[i] for i in fit_local], [train_idx[i] for i in val_local]
    if not val_idx or not test_idx:
        sys.exit("too few images per class to hold out validation and test images; add images or views")

    model, preprocess = clipkit.load(args.model, device=args.device, download_root=args.download_root)
    device = next(model.parameters()).device
    x = features(model, preprocess, data, device, args.batch_size)
    y = torch.tensor(data.labels)
    k = len(data.classes)
    print(f"{len(data)} images, {k} classes, {x.shape[1]}-d features; "
          f"{len(fit_idx)} train / {len(val_idx)} validation / {len(test_idx)} test")

    sweep = []
    for c in sorted(args.c_values):
        probe = SoftmaxRegression(c, args.max_iter).fit(x[fit_idx], y[fit_idx], k)
        sweep.append((c, accuracy(probe.predict(x[val_idx]), y[val_idx])))
        print(f"  C={c:<10.4g} validation accuracy {sweep[-1][1]:.4f}")
    best_c = max(sweep, key=lambda item: item[1])[0]  # ties go to the smaller C (stronger regularisation)

    probe = SoftmaxRegression(best_c, args.max_iter).fit(x[train_idx], y[train_idx], k)
    predicted = probe.predict(x[test_idx])
    test_accuracy = accuracy(predicted, y[test_idx])
    print(f"best C={best_c:.4g}; test accuracy {test_accuracy:.4f} on {len(test_idx)} held-out images")

    if args.report:
        report = {
            "model": args.model,
            "classes": data.classes,
            "sweep": [{"C": c, "val_accuracy": a} for c, a in sweep],
            "best_C": best_c,
            "test_accuracy": test_accuracy,
            "train": [data.names[i] for i in fit_idx],
            "val": [data.names[i] for i in val_idx],
            "test": [
                {"name": data.names[i], "label": data.classes[data.labels[i]], "predicted": data.classes[p]}
                for i, p in zip(test_idx, predicted.tolist())
            ],
        }
        args.report.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.report}")


if __name__ == "__main__":
    try:
        main()
    except clipkit.errors.ClipkitError as exc:  # a bad source, device or checkpoint: say what, not where
        sys.exit(f"{type(exc).__name__}: {exc}")
