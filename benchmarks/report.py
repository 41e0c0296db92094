"""Regenerate the benchmark tables in README.md and benchmarks/README.md, and the load plot, from saved results.

Reads the ``--json`` files ``bench_load.py`` and ``bench_inference.py`` wrote
(default: ``benchmarks/results/*.json``), rewrites the text between the
``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->`` markers of both READMEs
(with the date and the machine each run was taken on) and draws
``benchmarks/load.png``: per model and loader, the whole process split into
interpreter start + ``import torch``, the library's import and the load call,
and beside it the peak resident memory.

Run: ``python benchmarks/report.py`` (needs matplotlib: ``pip install 'clipkit[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import bench_load  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GOALS = (  # (what, measure, against, at most / at least)
    ("load call vs the floor", "load_s", "floor", 1.3),
    ("whole process vs the floor's", "whole_s", "floor", 1.25),
    ("peak RSS vs the floor's", "peak_rss_mib", "floor", 1.1),
)


def load_results(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """The load runs and the inference runs among ``paths``."""
    loads, inference = [], []
    for path in paths:
        data = json.loads(path.read_text())
        (loads if data["benchmark"] == "load" else inference).append(data)
    return loads, inference


def machine_line(data: dict) -> str:
    m = data["machine"]
    threads = f"{data['threads']} thread(s)" if data.get("threads") else "torch's default threads"
    return (f"Taken {m['date']} on {m['cpu']}, {m['memory']} RAM, GPU: {m['gpu']}; torch {m['torch']}, "
            f"Python {m['python']}; {threads}; load average at the end {m['load_average']}.")


def medians(data: dict) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["loader"]): r["median"] for r in data["results"]}


def load_section(data: dict) -> str:
    """The full load table of one run, titled, with its machine line."""
    kind = "TorchScript archive" if data["kind"] == "torchscript" else "official-layout fp16 state dict"
    target = "CPU float32" if data["device"] == "cpu" else "CUDA float16"
    runs = max(r["median"].get("runs", 0) for r in data["results"])
    title = f"**Load ({kind} -> {target})**, median of {runs} fresh processes per loader, interleaved"
    return f"{title}\n\n{bench_load.table(medians(data), data['device'])}\n\n{machine_line(data)}"


def goals_section(data: dict) -> str:
    """clipkit against the floor and the peers: each goal, its measured ratio, met or not."""
    summary = medians(data)
    memory = "peak_gpu_mib" if data["device"] == "cuda" else "peak_rss_mib"
    lines = ["| model | goal | clipkit | target | met |", "|---|---|---:|---:|:---:|"]
    for model in dict.fromkeys(m for m, _ in summary):
        ours = summary.get((model, "clipkit"), {})
        if "load_s" not in ours:
            continue
        for what, key, against, limit in GOALS:
            key = memory if key == "peak_rss_mib" else key
            base = summary.get((model, against), {}).get(key)
            if base:
                value = ours[key] / base
                lines.append(f"| {model} | {what} | {value:.2f}x | <= {limit}x | {'yes' if value <= limit else 'no'} |")
        for key, what in (("load_s", "load call"), ("whole_s", "whole process")):
            peers = {loader: s[key] for (m, loader), s in summary.items()
                     if m == model and loader not in ("clipkit", "floor") and s.get(key)}
            if peers:
                nearest = min(peers, key=peers.get)
                value = peers[nearest] / ours[key]
                lines.append(f"| {model} | {what}: fastest peer ({nearest}) vs clipkit | {value:.2f}x | >= 1.5x | "
                             f"{'yes' if value >= 1.5 else 'no'} |")
    return "\n".join(lines)


def inference_section(data: dict) -> str:
    import bench_inference

    impls = ["clipkit", *dict.fromkeys(i for r in data["records"] for i in r["items_per_s"] if i != "clipkit")]
    headers = ["model", "device", "call", "batch", *(f"{i} /s" for i in impls), "clipkit vs fastest peer",
               "max abs diff", "max rel diff"]
    table = _common.markdown_table(headers, bench_inference.throughput_rows(data["records"], impls))
    title = (f"**Inference throughput** (items/s, median of {data['repeats']} interleaved calls, "
             f"`torch.set_num_threads({data['threads']})`; max abs diff: largest feature difference from clipkit's; max rel diff: the same over the largest feature)")
    return f"{title}\n\n{table}\n\n{machine_line(data)}"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- bench:name -->`` and ``<!-- /bench:name -->`` set to ``body``."""
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- bench:{name} --> ... <!-- /bench:{name} --> markers")
    return pattern.sub(lambda m: f"{m[1]}{body}\n{m[2]}", text)


def plot(loads: list[dict], target: Path) -> None:
    """Horizontal bars per (model, loader): the whole process in three parts, and the peak memory beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(data, (model, loader), s) for data in loads for (model, loader), s in medians(data).items()
            if "load_s" in s]
    fig, (times, memory) = plt.subplots(1, 2, figsize=(12, 0.42 * len(rows) + 2.0), sharey=True)
    labels = [f"{model} {loader}" + ("" if data["device"] == "cpu" else " (CUDA)") for data, (model, loader), _ in rows]
    y = range(len(rows))
    start = [s["whole_s"] - s["import_s"] - s["load_s"] for _, _, s in rows]
    imports = [s["import_s"] for _, _, s in rows]
    loading = [s["load_s"] for _, _, s in rows]
    times.barh(y, start, color="#bbbbbb", label="interpreter start + import torch")
    times.barh(y, imports, left=start, color="#7a9cc6", label="import the library")
    times.barh(y, loading, left=[a + b for a, b in zip(start, imports)], color="#d9534f", label="load call")
    times.set_xlabel("seconds, fresh process (median)")
    times.set_yticks(list(y), labels)
    times.invert_yaxis()
    times.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6 / len(rows) - 0.08), ncol=3, fontsize=8)
    mem = [s.get("peak_gpu_mib") if data["device"] == "cuda" else s["peak_rss_mib"] for data, _, s in rows]
    memory.barh(y, [m or 0 for m in mem], color=["#5cb85c" if key[1] == "clipkit" else "#999999"
                                                 for _, key, _ in rows])
    memory.set_xlabel("peak memory, MiB (RSS on CPU, allocated GPU memory on CUDA)")
    dates = sorted({data["machine"]["date"] for data in loads})
    fig.suptitle(f"Loading CLIP checkpoints from official fp16 files ({', '.join(dates)}; {loads[0]['machine']['cpu']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main() -> None:
    """Read the results, rewrite both READMEs' benchmark blocks, draw the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=Path, help="result files (default: benchmarks/results/*.json)")
    parser.add_argument("--plot", type=Path, default=HERE / "load.png")
    args = parser.parse_args()
    loads, inference = load_results(args.results or sorted(RESULTS.glob("*.json")))
    cpu_loads = [d for d in loads if d["device"] == "cpu" and d["kind"] == "state_dict"]
    summary = "\n\n".join(goals_section(d) for d in cpu_loads)
    full = "\n\n".join([*(load_section(d) for d in loads), *(inference_section(d) for d in inference)])
    for readme, blocks in ((_common.REPO / "README.md", {"summary": f"{summary}\n\n" + "\n\n".join(
            load_section(d) for d in cpu_loads)}), (HERE / "README.md", {"results": full})):
        text = readme.read_text()
        for name, body in blocks.items():
            text = replace_block(text, name, body)
        readme.write_text(text)
        print(f"updated {readme}")
    if loads:
        plot(loads, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
