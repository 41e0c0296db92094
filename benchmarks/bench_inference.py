"""Inference throughput: clipkit vs open_clip vs OpenAI's model on the same weights, plus preprocessing.

For each model (random official-layout weights from ``tests/factories.py``)
the three implementations are built from one state dict:

- ``clipkit``: ``clipkit.load(path, device=...)``;
- ``open_clip``: ``open_clip.model.build_model_from_openai_state_dict(sd)`` (``.float()`` on the CPU);
- ``openai``: ``clip.model.build_model(sd)`` (``.float()`` on the CPU), what ``clip.load(jit=False)`` returns.

``encode_image`` (images/s) and ``encode_text`` (texts/s) are timed at a few
batch sizes under ``torch.inference_mode()``: warm-up calls first, then
``--repeats`` timed calls per implementation, interleaved (so a change in
machine load hits all three alike), median reported. Inputs are real photos
(scikit-image's) and real prompts. The CPU runs in float32 with
``torch.set_num_threads`` fixed (reported); on CUDA, when available, the same
is run in float16 with synchronisation around each call. Preprocessing is
timed separately: each library's transform over the same decoded photos.

Before timing, every implementation's outputs are compared with clipkit's
(the largest absolute difference is printed), so the three compute the same
thing.

Run: ``python benchmarks/bench_inference.py [--models ViT-B/32 RN50] [--threads 2]``.
Ratios are clipkit's throughput over the peer's (above 1: clipkit is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

IMPLS = ("clipkit", "open_clip", "openai")
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "horse.png", "motorcycle_left.png",
          "camera.png", "coins.png")
PROMPTS = ("a photo of a cat.", "a cup of coffee on a wooden table", "an astronaut in a white suit",
           "a rocket launching into a clear blue sky over the sea", "a horse", "a red motorcycle parked outside",
           "a black and white photo of a cameraman", "a pile of old coins")


def photos() -> list[Image.Image]:
    """scikit-image's sample photos, decoded once (RGB, grayscale and RGBA among them)."""
    import skimage.data

    images = []
    for name in PHOTOS:
        with Image.open(Path(skimage.data.data_dir) / name) as image:
            image.load()
            images.append(image.copy())
    return images


def build(impl: str, path: Path, state_dict: dict[str, torch.Tensor], device: torch.device):
    """``(model, preprocess)`` of ``impl`` for the weights at ``path`` / in ``state_dict``, in eval mode on ``device``."""
    if impl == "clipkit":
        import clipkit

        return clipkit.load(path, device=device)
    cpu = device.type == "cpu"
    if impl == "open_clip":
        import open_clip
        from open_clip.model import build_model_from_openai_state_dict

        model = build_model_from_openai_state_dict(dict(state_dict))  # fp16 where the releases are
        model = (model.float() if cpu else model).to(device).eval()
        return model, open_clip.image_transform(model.visual.image_size, is_train=False)
    if impl == "openai":
        clip = _common.openai_clip()
        model = clip.model.build_model(dict(state_dict))
        model = (model.float() if cpu else model).to(device).eval()
        return model, clip.clip._transform(model.visual.input_resolution)
    raise ValueError(impl)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (synchronising CUDA before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def throughput(models: dict, method: str, batches: dict[int, torch.Tensor], device: torch.device,
               warmup: int, repeats: int) -> dict[tuple[str, int], float]:
    """Items/s of ``model.<method>`` per (impl, batch size): median of interleaved timed calls."""
    result = {}
    with torch.inference_mode():
        for size, batch in batches.items():
            calls = {impl: (lambda m=model: getattr(m, method)(batch)) for impl, model in models.items()}
            for fn in calls.values():
                for _ in range(warmup):
                    fn()
            times: dict[str, list[float]] = {impl: [] for impl in calls}
            for _ in range(repeats):
                for impl, fn in calls.items():
                    times[impl].append(timed(fn, device))
            for impl, values in times.items():
                result[impl, size] = size / _common.median(values)
            print(f"  {method} batch {size}: " + ", ".join(f"{i} {result[i, size]:.1f}/s" for i in calls),
                  file=sys.stderr)
    return result


def agreement(models: dict, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """Largest |difference| of each implementation's image and text features from clipkit's."""
    with torch.inference_mode():
        ref_i = models["clipkit"].encode_image(images).float()
        ref_t = models["clipkit"].encode_text(tokens).float()
        return {
            impl: max((m.encode_image(images).float() - ref_i).abs().max().item(),
                      (m.encode_text(tokens).float() - ref_t).abs().max().item())
            for impl, m in models.items() if impl != "clipkit"
        }


def bench_model(name: str, args: argparse.Namespace, device: torch.device, sizes: list[int]) -> list[list[str]]:
    """Throughput rows for one model on ``device``."""
    import clipkit

    path = _common.checkpoint(name, args.cache_dir)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    built = {impl: build(impl, path, state_dict, device) for impl in args.impls}
    models = {impl: model for impl, (model, _) in built.items()}
    preprocess = built["clipkit"][1]
    pixels = torch.stack([preprocess(image) for image in photos()]).to(device)
    tokens = clipkit.tokenize(list(PROMPTS)).to(device)
    diffs = agreement(models, pixels[:2], tokens[:2])
    print(f"{name} on {device}: max |features - clipkit's| " +
          ", ".join(f"{impl} {d:.2e}" for impl, d in diffs.items()), file=sys.stderr)

    def repeat(batch: torch.Tensor, size: int) -> torch.Tensor:
        return batch[torch.arange(size) % len(batch)].contiguous()

    images = throughput(models, "encode_image", {s: repeat(pixels, s) for s in sizes}, device,
                        args.warmup, args.repeats)
    texts = throughput(models, "encode_text", {s: repeat(tokens, s) for s in sizes}, device,
                       args.warmup, args.repeats)
    rows = []
    dtype = "fp32" if device.type == "cpu" else "fp16"
    for what, table in (("encode_image", images), ("encode_text", texts)):
        for size in sizes:
            base = table["clipkit", size]
            rows.append([name, f"{device.type} {dtype}", what, size,
                         *(f"{table[i, size]:.1f}" for i in args.impls),
                         *(f"{base / table[i, size]:.2f}x" for i in args.impls if i != "clipkit")])
    return rows


def bench_preprocess(args: argparse.Namespace) -> list[list[str]]:
    """Images/s of each library's preprocessing (224 px) over the same decoded photos."""
    import clipkit.builtin.transforms as transforms
    import open_clip

    clip = _common.openai_clip()
    impls = {
        "clipkit": transforms.clip_transform(224),
        "open_clip": open_clip.image_transform(224, is_train=False),
        "openai": clip.clip._transform(224),
    }
    images = photos()
    reference = torch.stack([impls["clipkit"](im) for im in images])
    for impl, fn in impls.items():
        diff = (torch.stack([fn(im) for im in images]) - reference).abs().max().item()
        print(f"preprocess {impl}: max |tensor - clipkit's| {diff:.2e}", file=sys.stderr)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(args.repeats):
        for impl, fn in impls.items():
            start = time.perf_counter()
            for image in images:
                fn(image)
            times[impl].append(time.perf_counter() - start)
    rates = {impl: len(images) / _common.median(values) for impl, values in times.items()}
    sizes = sorted({im.size for im in images})
    return [["preprocess", f"{len(images)} photos {sizes[0][0]}x{sizes[0][1]}..{sizes[-1][0]}x{sizes[-1][1]}",
             *(f"{rates[i]:.1f}" for i in impls),
             *(f"{rates['clipkit'] / rates[i]:.2f}x" for i in impls if i != "clipkit")]]


def main() -> None:
    """Parse arguments, run the CPU (and CUDA) throughput and the preprocessing benchmarks, print tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="CPU batch sizes")
    parser.add_argument("--cuda-batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all CPUs)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA fp16 runs even when CUDA is available")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE)
    args = parser.parse_args()
    args.impls = list(IMPLS)
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    print(_common.machine_summary(), file=sys.stderr)

    devices = [(torch.device("cpu"), args.batch_sizes)]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append((torch.device("cuda"), args.cuda_batch_sizes))
    rows = []
    for device, sizes in devices:
        for name in args.models:
            rows += bench_model(name, args, device, sizes)
    peers = [i for i in args.impls if i != "clipkit"]
    headers = ["model", "device", "call", "batch", *(f"{i} /s" for i in args.impls),
               *(f"clipkit vs {p}" for p in peers)]
    print(f"### Inference throughput (items/s, median of {args.repeats}; "
          f"torch.set_num_threads({args.threads}))\n")
    print(_common.markdown_table(headers, rows))
    if not torch.cuda.is_available():
        print("\nCUDA fp16: skipped (no CUDA device)")
    print(f"\n### Preprocessing (images/s, one process, median of {args.repeats})\n")
    print(_common.markdown_table(["step", "input", *(f"{i} /s" for i in args.impls),
                                  *(f"clipkit vs {p}" for p in peers)], bench_preprocess(args)))
    print(f"\n{_common.machine_summary()}")


if __name__ == "__main__":
    main()
