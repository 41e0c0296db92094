"""Tower-only loads against the full load: ``clipkit.load(path, tower="image" | "text")`` vs ``clipkit.load(path)``.

Each measurement is a fresh interpreter (this script with ``--child MODE PATH``)
that imports clipkit and torchvision and discovers the plugins first (not
counted), then times the one ``clipkit.load(..., device="cpu")`` call (fp16
file, fp32 model) and reads the resident-memory high-water mark it reached
above the resident size before it (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``). Modes run interleaved; the median is reported,
with each tower's share of the file's bytes for comparison.

Checkpoints are the random-weight official-layout files of ``_common.checkpoint``.

Run: ``python benchmarks/bench_tower.py [--models ViT-B/32 RN50] [--runs 3] [--json out.json]``.
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

MODES = ("full", "image", "text")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def child(mode: str, path: str) -> None:
    """One load in this process; print a ``RESULT {json}`` line with its time and peak resident growth."""
    import warnings

    import torchvision.transforms  # noqa: F401  preprocess needs it; imported up front, as bench_load does

    import clipkit
    import clipkit.plugins

    warnings.simplefilter("ignore")
    clipkit.plugins.get_registry()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    model, _ = clipkit.load(path, device="cpu", tower=None if mode == "full" else mode)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") - before
    params = sum(p.numel() for p in model.parameters())
    print("RESULT " + json.dumps({"load_s": seconds, "peak_mib": peak / 1024, "params": params}), flush=True)


def measure(mode: str, path: Path) -> dict:
    """Run ``child(mode, path)`` in a fresh interpreter and return its result (``{"error": ...}`` on failure)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", mode, str(path)],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]}
    return json.loads(lines[-1][len("RESULT "):])


def tower_shares(path: Path) -> dict[str, float]:
    """Each tower's share of the checkpoint's tensor bytes (``logit_scale`` counted in both)."""
    import torch

    state_dict = torch.load(path, map_location="meta", weights_only=True)
    sizes = {key: value.numel() * value.element_size() for key, value in state_dict.items()}
    total = sum(sizes.values())
    image = sum(size for key, size in sizes.items() if key.startswith("visual.") or key == "logit_scale")
    return {"full": 1.0, "image": image / total, "text": (total - image + sizes.get("logit_scale", 0)) / total}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the interleaved measurements and print a markdown table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    print(_common.machine_summary())
    rows, raw = [], {}
    for name in args.models:
        path = _common.checkpoint(name, args.cache_dir)
        shares = tower_shares(path)
        results: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.runs):
            for mode in MODES:
                results[mode].append(measure(mode, path))
        raw[name] = results
        full = {key: _common.median([r[key] for r in results["full"] if "error" not in r]) for key in ("load_s", "peak_mib")}
        for mode in MODES:
            good = [r for r in results[mode] if "error" not in r]
            if not good:
                rows.append([name, mode, "-", "-", "-", "-", "-", results[mode][0]["error"]])
                continue
            load_s = _common.median([r["load_s"] for r in good])
            peak = _common.median([r["peak_mib"] for r in good])
            rows.append([name, mode, f"{shares[mode]:.0%}", f"{load_s:.3f}", f"{load_s / full['load_s']:.0%}",
                         f"{peak:.0f}", f"{peak / full['peak_mib']:.0%}", f"{good[0]['params'] / 1e6:.1f}M"])
    print(_common.markdown_table(
        ["model", "load", "file share", "load s", "vs full", "peak dRSS MiB", "vs full", "params"], rows))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
