"""Batch embedding throughput: clipkit's local engine vs a naive loop vs the Ray engine with N CPU actors.

All three embed the same folder of real photos (scikit-image's, cropped and
re-encoded as JPEG/PNG by ``tests/batch_fixtures.py``) with the same
random-weight checkpoint, end to end (model load included, so use enough
images to amortise it), and report images/s:

- ``naive``: the loop a user writes first, all in the main process: for each
  batch, ``PIL.Image.open`` + ``preprocess`` every file, stack,
  ``encode_image``, normalise;
- ``local``: ``clipkit.batch.embed_images(..., workers=W)`` (DataLoader worker
  processes decode while the model runs), for each ``--workers`` value;
- ``ray``: ``clipkit.batch.embed_images(..., engine="ray", actors=N)`` on a
  local ``ray.init(num_cpus=--ray-cpus)`` for each ``--actors`` value (Ray's
  start-up is reported apart and not counted);
- ``decode``: reading + decoding + preprocessing alone, one process, the
  per-core rate that decides how many CPU cores a GPU needs.

The runs are interleaved (``--repeats`` rounds of every engine) and the
median is reported, with the CPU time each engine spent per image (this process
and its DataLoader workers; Ray's actors are not counted): on a shared machine
the wall-clock rate depends on the CPU share the engine gets, the CPU time per
image does not.

The default model is a small ViT (``--model small``: width 256, 4 layers,
224 px, 32 px patches) whose encoder costs about as much as decoding a photo
on one core. ``--model tiny`` (width 64, 1 layer) costs a fraction of decoding:
the host side of a GPU run, where the model's share of the CPU is a copy and a
launch. ``--model ViT-B/32`` runs the real size (on a CPU, then, the model
dominates and every engine is model-bound). Use enough images to amortise
the start-up (model load, workers): the default is 1024.

``--threads`` fixes torch's threads in this process: the naive loop and the
decode line, and (it starts from the process's setting) the high end of what
the local engine's ``ThreadGovernor`` tries. DataLoader workers and Ray's CPU
actors use one thread each. On a shared, oversubscribed machine two OpenMP
threads can make a 5 ms preprocess take 300 ms (a thread spinning on a
descheduled peer), so compare at ``--threads 1`` there.

Run: ``python benchmarks/bench_batch.py [--images 1024] [--workers 1 2] [--actors 1 2] [--model small|tiny|ViT-B/32] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def tiny_config():
    """A tiny ViT CLIP (random weights) whose image encoder costs a fraction of decoding a photo: what the CPU side
    of a GPU run sees, where the model's share of the host's work is a copy and a launch."""
    return _common.factories().CLIPConfig(
        "tiny-vit", embed_dim=64, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=32,
        context_length=77, vocab_size=49408, text_width=64, text_layers=1,
    )


def small_config():
    """A small ViT CLIP (random weights) whose image encoder costs about as much as decoding a photo on one core."""
    return _common.factories().CLIPConfig(
        "small-vit", embed_dim=256, image_resolution=224, vision_layers=4, vision_width=256, vision_patch_size=32,
        context_length=77, vocab_size=49408, text_width=256, text_layers=2,
    )


def naive(paths: list[Path], checkpoint: Path, batch_size: int) -> float:
    """The naive loop; returns seconds."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    import clipkit

    start = time.perf_counter()
    model, preprocess = clipkit.load(checkpoint, device="cpu")
    rows = []
    with torch.inference_mode():
        for first in range(0, len(paths), batch_size):
            images = []
            for path in paths[first: first + batch_size]:
                try:
                    with Image.open(path) as image:
                        images.append(preprocess(image))
                except OSError:
                    continue
            rows.append(F.normalize(model.encode_image(torch.stack(images)).float(), dim=-1))
    torch.cat(rows)
    return time.perf_counter() - start


def decode_only(paths: list[Path], checkpoint: Path) -> float:
    """Read + decode + preprocess every file in this process; returns seconds."""
    from clipkit.batch.images import load_pixels
    from clipkit.loader import inspect, make_transform

    transform = make_transform(inspect(checkpoint))
    start = time.perf_counter()
    for path in paths:
        load_pixels(str(path), {}, transform)
    return time.perf_counter() - start


def engine(folder: Path, checkpoint: Path, out: Path, **options) -> float:
    """One ``clipkit.batch.embed_images`` run into a fresh folder; returns seconds."""
    from clipkit import batch

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    batch.embed_images(folder, out, model=checkpoint, device="cpu", progress=False, **options)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers; not Ray's actors)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--actors", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--model", default="small", help="'small' (default), 'tiny' or an official architecture name")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (median reported)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in this process (default: torch's)")
    args = parser.parse_args()
    import warnings

    from clipkit.errors import AssumptionWarning

    warnings.filterwarnings("ignore", category=AssumptionWarning)  # random weights: every convention is a guess
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    bf = _common._tests_module("batch_fixtures")
    work = Path(tempfile.mkdtemp(prefix="clipkit-bench-batch-"))
    try:
        folder = work / "photos"
        paths = bf.write_files(folder, bf.photo_bytes(args.images))
        configs = {"small": small_config, "tiny": tiny_config}
        config = configs[args.model]() if args.model in configs else _common.factories().OFFICIAL_CONFIGS[args.model]
        checkpoint = work / "model.pt"
        _common.factories().write_checkpoint(checkpoint, config)
        n = len(paths)
        runs = [("decode", "1 process, no model", lambda: decode_only(paths, checkpoint)),
                ("naive", f"batch {args.batch_size}", lambda: naive(paths, checkpoint, args.batch_size))]
        for workers in args.workers:
            runs.append(("local", f"batch {args.batch_size}, {workers} workers",
                         lambda w=workers: engine(folder, checkpoint, work / "out", batch_size=args.batch_size,
                                                  workers=w)))
        for actors in args.actors:
            runs.append(("ray", f"batch {args.batch_size}, {actors} CPU actors",
                         lambda a=actors: engine(folder, checkpoint, work / "out", batch_size=args.batch_size,
                                                 engine="ray", actors=a)))
        if args.actors:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
            print(f"ray.init(num_cpus={args.ray_cpus}): {time.perf_counter() - start:.1f} s (not counted)")
        seconds: dict[int, list[float]] = {}
        cpu: dict[int, list[float]] = {}
        try:
            for _ in range(args.repeats):  # interleaved: a change in the machine's load hits every engine alike
                for number, (name, settings, run) in enumerate(runs):
                    before = cpu_seconds()
                    seconds.setdefault(number, []).append(run())
                    cpu.setdefault(number, []).append(cpu_seconds() - before)
                    print(f"{name:7s} {settings:28s} {seconds[number][-1]:6.1f} s  "
                          f"{n / seconds[number][-1]:7.1f} images/s", flush=True)
        finally:
            if args.actors:
                ray.shutdown()
        rates = {number: n / _common.median(values) for number, values in seconds.items()}
        table = [[name, settings, f"{_common.median(seconds[i]):.1f}", f"{rates[i]:.1f}",
                  f"{rates[i] / rates[1]:.2f}x", "-" if name == "ray" else f"{1000 * _common.median(cpu[i]) / n:.1f}"]
                 for i, (name, settings, _) in enumerate(runs)]
        threads = f"torch.set_num_threads({args.threads})" if args.threads else "torch's default threads"
        print(f"\n### Batch embedding, {n} photos, model {args.model} (cpu fp32, {threads}), "
              f"median of {args.repeats} interleaved runs\n")
        print(_common.markdown_table(["engine", "settings", "seconds", "images/s", "vs naive", "CPU ms/image"], table))
        print(f"\n{_common.machine_summary()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
