"""Checkpoint load as a user's program sees it: clipkit vs the floor and every peer, each run a fresh interpreter.

Every measurement starts a new Python process (``_load_child.py``) that
imports one loader and loads one checkpoint, exactly like a script a user
runs; the runs of all loaders are interleaved (so drifting machine load hits
them alike) and the median of ``--runs`` is reported. Per run:

- *import*: importing the loader's library (after ``import torch``, reported
  apart as *torch*);
- *load*: the call that returns the model on the device: float32 on the CPU,
  float16 on CUDA;
- *whole*: from starting the process to the model being ready (interpreter
  start, every import, the load);
- *peak RSS*: the process's resident-memory high-water mark (``VmHWM``), and on
  CUDA the peak GPU memory (``torch.cuda.max_memory_allocated``).

Loaders (the same weights; random values in the exact official layout):

- ``floor``: ``torch.load(path, mmap=True)`` and one cast per tensor: no model,
  the least any loader must do;
- ``clipkit``: ``clipkit.load(path, device=...)``;
- ``open_clip``: ``open_clip.load_openai_model(path, device=...)`` plus its
  ``image_transform``;
- ``openai``: OpenAI's ``clip.load`` (for a plain state dict, which ``clip.load``
  cannot read on current torch, its own fallback branch: ``torch.load`` +
  ``clip.model.build_model`` + ``float()`` + ``_transform``);
- ``transformers``: ``CLIPModel.from_pretrained(dir, dtype=..., attn_implementation="sdpa")``
  on a ``save_pretrained``-style directory holding the same tensors as
  ``model.safetensors`` (ViTs only: transformers has no ResNet CLIP).

``--device cuda`` measures the same on the GPU (float16); without a CUDA
device it says so and exits cleanly. ``--jit-archive`` loads release-like
TorchScript archives instead (clipkit with ``jit=False`` and ``jit=True``,
open_clip, OpenAI's ``clip.load`` with ``jit=False`` and ``jit=True``).
``--json`` writes every run and the medians for ``report.py`` (README table and plot).

Run: ``python benchmarks/bench_load.py --models ViT-L/14 RN50x64 --runs 5 --json benchmarks/results/load-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

HERE = Path(__file__).resolve().parent
STATE_DICT_LOADERS = ("floor", "clipkit", "open_clip", "openai", "transformers")
ARCHIVE_LOADERS = ("clipkit", "clipkit-jit", "open_clip", "openai", "openai-jit")
MEASURES = ("torch_s", "import_s", "load_s", "whole_s", "peak_rss_mib", "load_rss_mib", "peak_gpu_mib")


def run_child(loader: str, path: Path, device: str, threads: int | None, timeout: float) -> dict:
    """One fresh-interpreter measurement; a failed or timed-out load returns ``{"error": ...}``."""
    env = dict(os.environ)
    # byte-compiled as ``pip install`` leaves a library: without this, an environment that sets
    # PYTHONDONTWRITEBYTECODE re-compiles an editable checkout's sources in every child (~50 ms for clipkit)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, str(HERE / "_load_child.py"), loader, str(path), device, str(_common.REPO / "tests")]
    started = time.time()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["whole_s"] = result.pop("ready_at") - started
            return result
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": last[:160]}


def summarise(outcomes: list[dict]) -> dict:
    """Medians of each measure over the successful runs (or the first error)."""
    good = [o for o in outcomes if "error" not in o]
    if not good:
        return {"error": outcomes[0]["error"], "runs": len(outcomes)}
    summary: dict = {"runs": len(good), "params": good[0]["params"], "dtypes": good[0]["dtypes"],
                     "dynamo_imported": any(o["dynamo_imported"] for o in good)}
    for key in MEASURES:
        values = [o[key] for o in good if o.get(key) is not None]
        summary[key] = _common.median(values) if values else None
    return summary


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def table(summary: dict[tuple[str, str], dict], device: str) -> str:
    """The markdown table: medians, each loader against the floor, and each peer against clipkit."""
    memory = "peak GPU MiB" if device == "cuda" else "peak RSS MiB"
    memory_key = "peak_gpu_mib" if device == "cuda" else "peak_rss_mib"
    headers = ["model", "loader", "runs", "torch s", "import s", "load s", "whole s", memory,
               "load vs floor", "whole vs floor", "memory vs floor", "load vs clipkit", "whole vs clipkit"]
    rows = []
    for (model, loader), s in summary.items():
        if "error" in s:
            rows.append([model, loader, s["runs"], *["-"] * (len(headers) - 4), f"failed: {s['error']}"])
            continue
        floor = summary.get((model, "floor"), {})
        ours = summary.get((model, "clipkit"), {})
        rows.append([
            model, loader, s["runs"], f"{s['torch_s']:.2f}", f"{s['import_s']:.2f}", f"{s['load_s']:.2f}",
            f"{s['whole_s']:.2f}", f"{s[memory_key]:.0f}",
            ratio(s["load_s"], floor.get("load_s")), ratio(s["whole_s"], floor.get("whole_s")),
            ratio(s[memory_key], floor.get(memory_key)),
            ratio(s["load_s"], ours.get("load_s")), ratio(s["whole_s"], ours.get("whole_s")),
        ])
    return _common.markdown_table(headers, rows)


def main() -> None:
    """Prepare the checkpoints, run every (model, loader) ``--runs`` times interleaved, print (and save) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ViT-L/14", "RN50x64"])
    parser.add_argument("--loaders", nargs="+", help="a subset of the loaders (default: all for the mode)")
    parser.add_argument("--runs", type=int, default=5, help="fresh-process runs per (model, loader); median reported")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the children (default: torch's default)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before one run counts as failed")
    parser.add_argument("--jit-archive", action="store_true", help="load release-like TorchScript archives")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="write every run, the medians and the machine here")
    args = parser.parse_args()
    if args.device == "cuda" and not _common.cuda_available():
        print("CUDA: skipped (no CUDA device on this machine)")
        return

    kind = "torchscript" if args.jit_archive else "state_dict"
    loaders = args.loaders or list(ARCHIVE_LOADERS if args.jit_archive else STATE_DICT_LOADERS)
    files: dict[tuple[str, str], Path] = {}
    for name in args.models:
        path = _common.checkpoint(name, args.cache_dir, kind=kind)
        for loader in loaders:
            if loader == "transformers":
                hf = _common.hf_checkpoint(name, args.cache_dir)
                if hf is not None:
                    files[name, loader] = hf
            else:
                files[name, loader] = path
        print(f"checkpoint {name}: {path} ({path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
    threads = f"OMP_NUM_THREADS={args.threads}" if args.threads else "torch's default threads"
    print(f"{_common.machine_summary()}; {threads} per child", file=sys.stderr)
    for (name, loader), path in files.items():  # untimed: byte-compile the libraries, warm the page cache
        run_child(loader, path, args.device, args.threads, args.timeout)

    runs: dict[tuple[str, str], list[dict]] = {key: [] for key in files}
    for i in range(args.runs):
        for (name, loader), path in files.items():  # interleaved
            outcome = run_child(loader, path, args.device, args.threads, args.timeout)
            runs[name, loader].append(outcome)
            shown = outcome.get("error") or f"load {outcome['load_s']:.2f} s, whole {outcome['whole_s']:.2f} s"
            print(f"  {name} {loader} run {i + 1}/{args.runs}: {shown}", file=sys.stderr)

    summary = {key: summarise(outcomes) for key, outcomes in runs.items()}
    what = "TorchScript archive" if args.jit_archive else "official-layout fp16 state dict"
    target = "CPU float32" if args.device == "cpu" else "CUDA float16"
    print(f"### Load ({what} -> {target}), median of {args.runs} fresh processes, interleaved\n")
    print(table(summary, args.device))
    print(f"\n{_common.machine_summary()}; {threads} per child")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "load", "kind": kind, "device": args.device, "threads": args.threads,
            "machine": _common.machine_info(),
            "results": [{"model": name, "loader": loader, "median": summary[name, loader], "runs": outcomes}
                        for (name, loader), outcomes in runs.items()],
        }, indent=1))


if __name__ == "__main__":
    main()
