"""Inference throughput: clipkit vs open_clip, OpenAI's model and transformers on the same weights, plus preprocessing.

For each model (random official-layout weights from ``tests/factories.py``)
the implementations are built from the same tensors:

- ``clipkit``: ``clipkit.load(path, device=...)``;
- ``open_clip``: ``open_clip.model.build_model_from_openai_state_dict(sd)`` (``.float()`` on the CPU);
- ``openai``: ``clip.model.build_model(sd)`` (``.float()`` on the CPU), what ``clip.load(jit=False)`` returns;
- ``transformers``: ``CLIPModel.from_pretrained(dir, attn_implementation="sdpa")`` on the same tensors in
  transformers' layout (``get_image_features`` / ``get_text_features``; ViTs only).

``encode_image`` (images/s) and ``encode_text`` (texts/s) are timed at a few
batch sizes under ``torch.inference_mode()``: warm-up calls first, then
``--repeats`` timed calls per implementation, interleaved (so a change in
machine load hits all three alike), median reported. Inputs are real photos
(scikit-image's) and real prompts. The CPU runs in float32 with
``torch.set_num_threads`` fixed (reported); on CUDA, when available, the same
is run in float16 with synchronisation around each call. Preprocessing is
timed separately: each library's transform over the same decoded photos.

Before timing, every implementation's outputs are compared with clipkit's
(the largest absolute difference is printed and tabled), so all compute the
same thing.

Run: ``python benchmarks/bench_inference.py [--models ViT-B/32 ViT-L/14 RN50] [--threads 2] [--json FILE]``.
Ratios are clipkit's throughput over the fastest peer's (above 1: clipkit is faster).
"""

from __future__ import annotations

import argparse
import json
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

IMPLS = ("clipkit", "open_clip", "openai", "transformers")
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


class TransformersCLIP(torch.nn.Module):
    """transformers' ``CLIPModel`` behind ``encode_image`` / ``encode_text`` (its projected pooled features)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def _features(out: object) -> torch.Tensor:
        return out.pooler_output if hasattr(out, "pooler_output") else out  # transformers 5 returns the output object

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._features(self.model.get_image_features(pixel_values=images))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._features(self.model.get_text_features(input_ids=tokens))


def build(impl: str, name: str, path: Path, state_dict: dict[str, torch.Tensor], device: torch.device):
    """``(model, preprocess)`` of ``impl`` for model ``name``'s weights at ``path`` / in ``state_dict``, eval, on ``device``."""
    if impl == "transformers":
        from transformers import CLIPModel

        hf_dir = _common.hf_checkpoint(name, path.parent)
        dtype = torch.float32 if device.type == "cpu" else torch.float16
        model = CLIPModel.from_pretrained(hf_dir, dtype=dtype, attn_implementation="sdpa").to(device).eval()
        return TransformersCLIP(model), None
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


def agreement(models: dict, images: torch.Tensor, tokens: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """Largest |difference| of each implementation's image and text features from clipkit's: absolute, and
    relative to the largest |feature| (random weights give features far larger than trained ones)."""
    absolute, relative = {}, {}
    with torch.inference_mode():
        ref_i = models["clipkit"].encode_image(images).float()
        ref_t = models["clipkit"].encode_text(tokens).float()
        for impl, m in models.items():
            if impl == "clipkit":
                continue
            gaps = ((m.encode_image(images).float() - ref_i).abs().max().item(),
                    (m.encode_text(tokens).float() - ref_t).abs().max().item())
            absolute[impl] = max(gaps)
            relative[impl] = max(gaps[0] / ref_i.abs().max().item(), gaps[1] / ref_t.abs().max().item())
    return absolute, relative


def bench_model(name: str, args: argparse.Namespace, device: torch.device, sizes: list[int]) -> list[dict]:
    """Throughput records for one model on ``device``: one per (call, batch size)."""
    import clipkit

    path = _common.checkpoint(name, args.cache_dir)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    impls = [i for i in args.impls if i != "transformers" or _common.factories().OFFICIAL_CONFIGS[name].family == "vit"]
    built = {impl: build(impl, name, path, state_dict, device) for impl in impls}
    models = {impl: model for impl, (model, _) in built.items()}
    preprocess = built["clipkit"][1]
    pixels = torch.stack([preprocess(image) for image in photos()]).to(device)
    tokens = clipkit.tokenize(list(PROMPTS)).to(device)
    diffs, relative = agreement(models, pixels[:4], tokens[:4])
    print(f"{name} on {device}: max |features - clipkit's| " +
          ", ".join(f"{impl} {d:.2e} ({relative[impl]:.1e} of the largest feature)" for impl, d in diffs.items()),
          file=sys.stderr)

    def repeat(batch: torch.Tensor, size: int) -> torch.Tensor:
        return batch[torch.arange(size) % len(batch)].contiguous()

    images = throughput(models, "encode_image", {s: repeat(pixels, s) for s in sizes}, device,
                        args.warmup, args.repeats)
    texts = throughput(models, "encode_text", {s: repeat(tokens, s) for s in sizes}, device,
                       args.warmup, args.repeats)
    records = []
    dtype = "fp32" if device.type == "cpu" else "fp16"
    for what, table in (("encode_image", images), ("encode_text", texts)):
        for size in sizes:
            records.append({"model": name, "device": f"{device.type} {dtype}", "call": what, "batch": size,
                            "items_per_s": {impl: table[impl, size] for impl in impls},
                            "max_abs_diff": diffs, "max_rel_diff": relative})
    return records


def throughput_rows(records: list[dict], impls: list[str]) -> list[list[str]]:
    """Table rows: items/s of each implementation and clipkit's over the fastest peer's."""
    rows = []
    for r in records:
        rates = r["items_per_s"]
        peers = {impl: rate for impl, rate in rates.items() if impl != "clipkit"}
        fastest = max(peers, key=peers.get) if peers else None
        rows.append([r["model"], r["device"], r["call"], r["batch"],
                     *(f"{rates[i]:.1f}" if i in rates else "-" for i in impls),
                     f"{rates['clipkit'] / peers[fastest]:.2f}x ({fastest})" if fastest else "-",
                     f"{max(r['max_abs_diff'].values()):.1e}" if r["max_abs_diff"] else "-",
                     f"{max(r['max_rel_diff'].values()):.1e}" if r.get("max_rel_diff") else "-"])
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
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "ViT-L/14", "RN50"])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), help="clipkit and a subset of the peers")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="CPU batch sizes")
    parser.add_argument("--cuda-batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all CPUs)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA fp16 runs even when CUDA is available")
    parser.add_argument("--no-preprocess", action="store_true", help="skip the preprocessing benchmark")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="write the records and the machine here (for report.py)")
    args = parser.parse_args()
    args.impls = ["clipkit", *(i for i in args.impls if i != "clipkit")]
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    print(_common.machine_summary(), file=sys.stderr)

    devices = [(torch.device("cpu"), args.batch_sizes)]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append((torch.device("cuda"), args.cuda_batch_sizes))
    records = []
    for device, sizes in devices:
        for name in args.models:
            records += bench_model(name, args, device, sizes)
    headers = ["model", "device", "call", "batch", *(f"{i} /s" for i in args.impls),
               "clipkit vs fastest peer", "max abs diff", "max rel diff"]
    print(f"### Inference throughput (items/s, median of {args.repeats}; "
          f"torch.set_num_threads({args.threads}))\n")
    print(_common.markdown_table(headers, throughput_rows(records, args.impls)))
    if not torch.cuda.is_available():
        print("\nCUDA fp16: skipped (no CUDA device)")
    if not args.no_preprocess:
        peers = ["open_clip", "openai"]
        print(f"\n### Preprocessing (images/s, one process, median of {args.repeats})\n")
        print(_common.markdown_table(["step", "input", *(f"{i} /s" for i in ["clipkit", *peers]),
                                      *(f"clipkit vs {p}" for p in peers)], bench_preprocess(args)))
    print(f"\n{_common.machine_summary()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "inference", "threads": args.threads, "repeats": args.repeats,
                                         "machine": _common.machine_info(), "records": records}, indent=1))


if __name__ == "__main__":
    main()
