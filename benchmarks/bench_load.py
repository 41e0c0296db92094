"""Checkpoint load time and peak memory: clipkit vs open_clip vs OpenAI's reference loader.

Every measurement is one fresh interpreter (this script with ``--child``), so
imports, allocator state and page-cache effects are per run, as a user's
program sees them. In the child, after ``import torch`` (not counted):

- ``import``: importing the library and torchvision (every loader's
  preprocess needs it: the peers import it at import time, clipkit lazily at
  its first load, so it is imported here for all alike), and for clipkit the
  plugin discovery ``clipkit.plugins.get_registry()``;
- ``load``: the call that turns the file into ``(model, preprocess)`` on the
  CPU in float32;
- ``peak dRSS``: the resident-memory high-water mark during the load minus the
  resident size after the imports: the memory the load itself needed. On
  Linux the mark is ``VmHWM``, reset after the imports (``/proc/self/clear_refs``);
  ``getrusage(RUSAGE_SELF).ru_maxrss`` is not usable there, because it survives
  ``execve``: a child starts with its parent's peak. Elsewhere ``ru_maxrss``
  is the fallback.

Loaders (same file, same weights):

- ``clipkit``: ``clipkit.load(path, device="cpu")``;
- ``open_clip``: ``torch.load`` + ``open_clip.model.build_model_from_openai_state_dict(sd).float()``
  + ``open_clip.image_transform``;
- ``openai``: OpenAI's ``clip.load(path, device="cpu", jit=False)``. For a
  plain state-dict file ``clip.load`` fails on current torch (its failed
  ``torch.jit.load`` attempt leaves the shared file handle at the end, and the
  fallback ``torch.load`` of that handle raises ``EOFError``), so for those
  files the child runs the fallback branch itself: ``torch.load`` +
  ``clip.model.build_model(sd).float()`` + ``clip.clip._transform``.

``--jit-archive`` benchmarks release-like TorchScript archives instead (made
once with ``clipkit.jit.export_torchscript`` from OpenAI's fp16 model): clipkit
with ``jit=False`` (weights read from the archive as data) and ``jit=True``,
open_clip's ``load_openai_model``, and ``clip.load`` with ``jit=False`` and
``jit=True``.

Run: ``python benchmarks/bench_load.py [--models RN50 ViT-B/32 ViT-L/14] [--runs 5]``.
Ratios are the peer's number over clipkit's (above 1: clipkit is faster / smaller).
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

STATE_DICT_LOADERS = ("clipkit", "open_clip", "openai")
ARCHIVE_LOADERS = ("clipkit", "clipkit-jit", "open_clip", "openai", "openai-jit")
LARGE_PARAMS = 200_000_000


# -- the child: one load in a fresh process -------------------------------------------------------


def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _maxrss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _import_loader(loader: str):
    """Import what ``loader`` needs and return a function ``path -> (model, preprocess)``."""
    import torchvision.transforms  # noqa: F401  every loader's preprocess needs it (clipkit imports it lazily)

    if loader.startswith("clipkit"):
        import clipkit
        import clipkit.plugins

        clipkit.plugins.get_registry()
        jit = loader == "clipkit-jit"
        return lambda path: clipkit.load(path, device="cpu", jit=jit)
    if loader == "open_clip":
        import open_clip
        import torch
        from open_clip.model import build_model_from_openai_state_dict

        def load_open_clip(path):
            if _is_archive(path):
                model = open_clip.load_openai_model(path, device="cpu")
            else:
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
                model = build_model_from_openai_state_dict(state_dict).float()
            return model, open_clip.image_transform(model.visual.image_size, is_train=False)

        return load_open_clip
    if loader.startswith("openai"):
        import torch

        clip = _common.openai_clip()
        jit = loader == "openai-jit"

        def load_openai(path):
            if jit or _is_archive(path):
                return clip.load(path, device="cpu", jit=jit)
            # clip.load's state-dict branch (torch.load's default is weights_only=True there too)
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            model = clip.model.build_model(state_dict).to("cpu")
            model.float()
            return model, clip.clip._transform(model.visual.input_resolution)

        return load_openai
    raise SystemExit(f"unknown loader {loader!r}")


def _is_archive(path: str) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def child(loader: str, path: str) -> None:
    """Time one import + load and print a ``RESULT {json}`` line."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    load = _import_loader(loader)
    t1 = time.perf_counter()
    rss_after_imports = _proc_status_mib("VmRSS") or 0.0
    reset = _reset_peak()
    model, _preprocess = load(path)
    t2 = time.perf_counter()
    # ru_maxrss survives execve on Linux (a child starts with its parent's peak), so the
    # per-process high-water mark VmHWM is read where it exists, reset after the imports
    hwm = _proc_status_mib("VmHWM")
    peak = hwm if hwm is not None else _maxrss_mib()
    if isinstance(model, torch.jit.ScriptModule):
        tensors = list(model.state_dict().values())
    else:
        tensors = list(model.parameters())
    floating = [t for t in tensors if t.is_floating_point()]
    result = {
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "rss_after_imports_mib": rss_after_imports,
        "peak_mib": peak,
        "peak_delta_mib": peak - rss_after_imports,
        "peak_source": ("VmHWM since imports" if reset else "VmHWM") if hwm is not None else "ru_maxrss",
        "ru_maxrss_mib": _maxrss_mib(),
        "params": sum(t.numel() for t in floating),
        "dtypes": sorted({str(t.dtype) for t in floating}),
        "type": type(model).__name__,
    }
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent: runs children, aggregates, prints the table -----------------------------------------


def run_child(loader: str, path: Path, threads: int | None = None) -> dict:
    """Run one measurement in a fresh interpreter; a failed load returns ``{"error": ...}``."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", loader, str(path)],
        capture_output=True, text=True, timeout=1800, env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": last[:160]}


def param_count(name: str) -> int:
    """Parameters of official architecture ``name``, from shapes only (meta tensors)."""
    config = _common.factories().OFFICIAL_CONFIGS[name]
    return sum(t.numel() for t in _common.factories().make_state_dict(config, device="meta").values())


def fmt_ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def main() -> None:
    """Parse arguments, prepare checkpoints, run every (model, loader) pair ``runs`` times interleaved, print tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("LOADER", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["RN50", "ViT-B/32", "ViT-L/14"])
    parser.add_argument("--loaders", nargs="+", help="subset of the loaders (default: all for the mode)")
    parser.add_argument("--runs", type=int, default=5, help="fresh-process runs per (model, loader); median reported")
    parser.add_argument("--runs-large", type=int, help=f"runs for models over {LARGE_PARAMS // 10**6}M parameters "
                        "(default: --runs)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the children (default: torch's default)")
    parser.add_argument("--jit-archive", action="store_true", help="benchmark release-like TorchScript archives")
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    kind = "torchscript" if args.jit_archive else "state_dict"
    if args.jit_archive:
        try:
            from clipkit.jit import export_torchscript  # noqa: F401
        except ImportError:
            sys.exit("--jit-archive needs clipkit.jit.export_torchscript, which this clipkit does not have")
    loaders = args.loaders or list(ARCHIVE_LOADERS if args.jit_archive else STATE_DICT_LOADERS)
    paths = {}
    for name in args.models:
        t = time.perf_counter()
        paths[name] = _common.checkpoint(name, args.cache_dir, kind=kind)
        print(f"checkpoint {name}: {paths[name]} ({paths[name].stat().st_size / 2**20:.0f} MiB, "
              f"ready in {time.perf_counter() - t:.1f} s)", file=sys.stderr)

    threads = f"{args.threads} thread(s) per child" if args.threads else "torch's default threads per child"
    print(f"{_common.machine_summary()}; {threads}", file=sys.stderr)
    first = paths[args.models[0]]
    for loader in loaders:  # untimed: byte-compile the libraries, warm the page cache
        run_child(loader, first, args.threads)

    results: dict[tuple[str, str], list[dict]] = {}
    for name in args.models:
        runs = args.runs_large if args.runs_large and param_count(name) > LARGE_PARAMS else args.runs
        for i in range(runs):
            for loader in loaders:  # interleaved, so drifting machine load hits every loader alike
                outcome = run_child(loader, paths[name], args.threads)
                results.setdefault((name, loader), []).append(outcome)
                shown = "error" if "error" in outcome else f"{outcome['load_s']:.2f} s"
                print(f"  {name} {loader} run {i + 1}/{runs}: {shown}", file=sys.stderr)

    rows = []
    summary: dict[tuple[str, str], dict] = {}
    for (name, loader), outcomes in results.items():
        good = [o for o in outcomes if "error" not in o]
        if not good:
            summary[name, loader] = {"error": outcomes[0]["error"], "runs": len(outcomes)}
            continue
        summary[name, loader] = {
            key: _common.median([o[key] for o in good]) for key in ("import_s", "load_s", "peak_delta_mib")
        } | {"runs": len(good), "params": good[0]["params"], "dtypes": good[0]["dtypes"]}
    for (name, loader), s in summary.items():
        base = summary.get((name, "clipkit"), {})
        if "error" in s:
            rows.append([name, loader, s["runs"], "-", "-", "-", "-", "-", "-", f"failed: {s['error']}"])
            continue
        total = s["import_s"] + s["load_s"]
        base_total = base.get("import_s", 0) + base.get("load_s", 0) if "load_s" in base else None
        params = "/".join(s["dtypes"]).replace("torch.", "")
        rows.append([
            name, loader, s["runs"], f"{s['import_s']:.2f}", f"{s['load_s']:.2f}", f"{total:.2f}",
            f"{s['peak_delta_mib']:.0f}", fmt_ratio(s["load_s"], base.get("load_s")),
            fmt_ratio(s["peak_delta_mib"], base.get("peak_delta_mib")), f"{s['params'] / 1e6:.1f}M {params}",
        ])
    headers = ["model", "loader", "runs", "import s", "load s", "total s", "peak dRSS MiB",
               "load vs clipkit", "dRSS vs clipkit", "weights"]
    print(f"### Checkpoint load ({'TorchScript archive' if args.jit_archive else 'fp16 state dict'}), "
          f"median of fresh-process runs\n")
    print(_common.markdown_table(headers, rows))
    print(f"\n{_common.machine_summary()}; {threads}")
    if args.json:
        args.json.write_text(json.dumps(
            {f"{n} | {l}": {"runs": r, "median": summary[n, l]} for (n, l), r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
