"""A complete third-party clipkit plugin in one file: a new CLIP-like family, loaded by ``clipkit.load``.

The family here, "bagclip", is deliberately small: the image tower embeds
patches with one convolution, adds a position embedding and averages them; the
text tower averages token embeddings up to the end-of-text token. What matters
is the plugin shape, which is the same for any architecture:

- an ``ArchSpec`` subclass (attrs, frozen, keyword-only) holding every
  hyperparameter the checkpoint's shapes reveal;
- ``detect_architecture(state_dict)``: claim only your own key signature, read
  the spec off tensor shapes, return ``None`` for anything else;
- ``build_model(spec)``: build the module for your spec (clipkit calls it on the
  meta device and then assigns the checkpoint's tensors), ``None`` otherwise;
- ``make_transform(spec)`` (optional): your own preprocessing; without it the
  CLIP default (resize, center crop, CLIP mean/std) is used.

Shipped as a distribution, the module is found through an entry point in the
``clipkit`` group; in ``pyproject.toml``::

    [project]
    name = "clipkit-bagclip"
    version = "0.1.0"
    dependencies = ["clipkit"]

    [project.entry-points.clipkit]
    bagclip = "clipkit_bagclip"    # the module holding the @clipkit.hookimpl functions

After ``pip install clipkit-bagclip``, ``clipkit.load("bagclip.pt")`` works in
any program and ``clipkit plugins`` lists it. This script skips packaging: it
registers itself at run time with ``clipkit.plugins.register_plugin``, writes a
randomly initialised bagclip checkpoint, and loads it back through the normal
pipeline.

Examples::

    python examples/custom_plugin.py                     # write a checkpoint to a temp dir and load it
    python examples/custom_plugin.py --output ckpt/      # keep the checkpoint
    python examples/custom_plugin.py --model ckpt/bagclip.pt --device cpu
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

import clipkit
import clipkit.plugins

# -- the plugin: spec, model, hooks ------------------------------------------------------


@attrs.frozen(kw_only=True)
class BagSpec(clipkit.ArchSpec):
    """A bagclip checkpoint's architecture, read entirely off its tensor shapes."""

    family: str = "bagclip"
    embed_dim: int
    width: int
    patch_size: int
    vocab_size: int
    context_length: int


class PatchBagEncoder(nn.Module):
    """Image tower: non-overlapping patch embedding + position embedding, averaged, then projected."""

    def __init__(self, spec: BagSpec) -> None:
        super().__init__()
        grid = spec.image_resolution // spec.patch_size
        self.input_resolution = spec.image_resolution
        self.patchify = nn.Conv2d(3, spec.width, kernel_size=spec.patch_size, stride=spec.patch_size)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid, spec.width) * 0.02)
        self.norm = nn.LayerNorm(spec.width)
        self.proj = nn.Linear(spec.width, spec.embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patchify(images.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)
        pooled = nn.functional.gelu(patches + self.positional_embedding).mean(dim=1)
        return self.proj(self.norm(pooled))


class TokenBagEncoder(nn.Module):
    """Text tower: token + position embeddings averaged over the tokens up to end-of-text, then projected."""

    def __init__(self, spec: BagSpec) -> None:
        super().__init__()
        self.embedding = nn.Embedding(spec.vocab_size, spec.width)
        self.positional_embedding = nn.Parameter(torch.randn(spec.context_length, spec.width) * 0.01)
        self.norm = nn.LayerNorm(spec.width)
        self.proj = nn.Linear(spec.width, spec.embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.embedding(tokens) + self.positional_embedding[:length]
        end = tokens.argmax(dim=1, keepdim=True)  # the end-of-text token has the highest id, as in CLIP
        keep = (torch.arange(length, device=tokens.device) <= end).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1)
        return self.proj(self.norm(pooled))


class BagCLIP(nn.Module):
    """The model ``build_model`` returns: ``encode_image``, ``encode_text``, ``forward`` as clipkit requires."""

    def __init__(self, spec: BagSpec) -> None:
        super().__init__()
        self.visual = PatchBagEncoder(spec)
        self.text = TokenBagEncoder(spec)
        self.logit_scale = nn.Parameter(torch.tensor(2.659260036932778))  # log(1 / 0.07)

    @property
    def context_length(self) -> int:
        """Tokens per text (tokenize with ``context_length=model.context_length``)."""
        return self.text.positional_embedding.shape[0]

    @property
    def vocab_size(self) -> int:
        """Token ids the text embedding knows."""
        return self.text.embedding.num_embeddings

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``[batch, embed_dim]`` (not normalised)."""
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features ``[batch, embed_dim]`` (not normalised)."""
        return self.text(tokens)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)``: scaled cosine similarities."""
        image = nn.functional.normalize(self.encode_image(images), dim=-1)
        text = nn.functional.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.exp() * image @ text.T
        return logits, logits.T


SIGNATURE = ("visual.patchify.weight", "visual.positional_embedding", "text.embedding.weight")


@clipkit.hookimpl
def detect_architecture(state_dict: Mapping[str, torch.Tensor]) -> BagSpec | None:
    """Claim state dicts with bagclip's keys; every field comes from a tensor's shape."""
    if not all(key in state_dict for key in SIGNATURE):
        return None
    width, _, patch, _ = state_dict["visual.patchify.weight"].shape
    grid = round(state_dict["visual.positional_embedding"].shape[0] ** 0.5)
    vocab, _ = state_dict["text.embedding.weight"].shape
    embed_dim, _ = state_dict["visual.proj.weight"].shape
    return BagSpec(
        image_resolution=grid * patch,
        embed_dim=embed_dim,
        width=width,
        patch_size=patch,
        vocab_size=vocab,
        context_length=state_dict["text.positional_embedding"].shape[0],
    )


@clipkit.hookimpl
def build_model(spec: clipkit.ArchSpec) -> nn.Module | None:
    """Build a ``BagCLIP`` for a ``BagSpec``; leave every other family to its own plugin."""
    return BagCLIP(spec) if isinstance(spec, BagSpec) else None


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


@clipkit.hookimpl
def make_transform(spec: clipkit.ArchSpec) -> transforms.Compose | None:
    """bagclip squashes the whole image to a square (no crop) and scales pixels to [-1, 1]."""
    if not isinstance(spec, BagSpec):
        return None
    return transforms.Compose([
        _to_rgb,
        transforms.Resize((spec.image_resolution, spec.image_resolution),
                          interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])


# -- the demonstration ------------------------------------------------------------------------


def write_demo_checkpoint(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save a randomly initialised bagclip state dict (plain tensors, CLIP's vocabulary) to ``path``; return it."""
    torch.manual_seed(seed)
    spec = BagSpec(image_resolution=64, embed_dim=64, width=96, patch_size=16, vocab_size=49408, context_length=32)
    state_dict = BagCLIP(spec).state_dict()
    torch.save(state_dict, path)
    return state_dict


def demo_images() -> dict[str, Image.Image]:
    """Two images drawn in code, so the script needs no files."""
    red = Image.new("RGB", (120, 80), (220, 30, 30))
    stripes = Image.new("RGB", (100, 100), (255, 255, 255))
    for x in range(0, 100, 20):
        stripes.paste((20, 20, 200), (x, 0, x + 10, 100))
    return {"red rectangle": red, "blue stripes": stripes}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: where to write the demo checkpoint, or an existing one to load."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an existing bagclip checkpoint: path or URL (default: write a new one)")
    parser.add_argument("--output", type=Path, help="folder for the new checkpoint (default: a temporary folder)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    return parser.parse_args(argv)


@torch.no_grad()
def main(argv: Sequence[str] | None = None) -> None:
    """Register the plugin, make (or take) a bagclip checkpoint, load it through clipkit, and use it."""
    args = parse_args(argv)
    clipkit.plugins.register_plugin(sys.modules[__name__], name="bagclip")

    with tempfile.TemporaryDirectory() as scratch:
        saved = None
        path: str | Path | None = args.model
        if path is None:
            folder = args.output or Path(scratch)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "bagclip.pt"
            saved = write_demo_checkpoint(path)
            print(f"wrote {path}")

        spec = clipkit.inspect(path)
        print(f"detected: {spec!r}")
        model, preprocess = clipkit.load(path, device=args.device)
        print(f"loaded: {type(model).__name__} on {next(model.parameters()).device}, "
              f"input {model.visual.input_resolution}px, context {model.context_length} tokens")
        if saved is not None:
            loaded = {k: v.float().cpu() for k, v in model.state_dict().items()}
            same = loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k].float()) for k in saved)
            print(f"weights round-trip: {'ok' if same else 'MISMATCH'}")
            if not same:
                sys.exit(1)

        device = next(model.parameters()).device
        images = demo_images()
        labels = ["a red rectangle", "blue and white stripes", "a photo of a cat"]
        pixels = torch.stack([preprocess(image) for image in images.values()]).to(device)
        tokens = clipkit.tokenize(labels, context_length=model.context_length).to(device)
        logits_per_image, _ = model(pixels, tokens)
        for name, probs in zip(images, logits_per_image.float().softmax(dim=-1).cpu()):
            print(f"{name}: " + ", ".join(f"{label} {p:.4f}" for label, p in zip(labels, probs.tolist())))


if __name__ == "__main__":
    try:
        main()
    except clipkit.errors.ClipkitError as exc:  # a bad source, device or checkpoint: say what, not where
        sys.exit(f"{type(exc).__name__}: {exc}")
