"""Shared pieces of the benchmarks: random official-layout checkpoints, the peers' imports, tables.

Checkpoints come from ``tests/factories.py`` (random weights, exactly the
official key layout and fp16/fp32 dtypes), written once into a cache folder
(``--cache-dir``, default ``$CLIPKIT_BENCH_CACHE`` or ``~/.cache/clipkit-bench``).
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
import types
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("CLIPKIT_BENCH_CACHE", "~/.cache/clipkit-bench")).expanduser()


def _tests_module(name: str) -> types.ModuleType:
    """A helper module of the test suite (``tests/<name>.py``), imported as the tests import it."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module(name)


def factories() -> types.ModuleType:
    """The test suite's checkpoint factory (``tests/factories.py``)."""
    return _tests_module("factories")


def slug(name: str) -> str:
    """A file-name-safe form of an official model name (``ViT-B/32`` -> ``ViT-B-32``)."""
    return name.replace("/", "-").replace("@", "-")


def checkpoint(name: str, cache_dir: Path, *, kind: str = "state_dict") -> Path:
    """The random-weight checkpoint of official architecture ``name``, written on first use.

    ``kind="state_dict"``: a ``torch.save`` zip of the official fp16 state dict.
    ``kind="torchscript"``: a release-like fp16 TorchScript archive of the same
    weights (OpenAI's ``build_model``, traced by ``clipkit.export.to_torchscript``).
    """
    import torch

    cache_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".pt" if kind == "state_dict" else ".jit.pt"
    path = cache_dir / f"{slug(name)}{suffix}"
    if path.exists():
        return path
    config = factories().OFFICIAL_CONFIGS[name]
    partial = path.with_name(path.name + ".partial")
    if kind == "state_dict":
        factories().write_checkpoint(partial, config, seed=0, dtype=torch.float16)
    elif kind == "torchscript":
        from clipkit.export import to_torchscript

        state_dict = factories().make_state_dict(config, seed=0, dtype=torch.float16)
        model = openai_clip().model.build_model(dict(state_dict)).eval()  # fp16, as the releases were traced
        to_torchscript(model, partial, batch_size=1, overwrite=True)  # a .partial left by an aborted run
    else:
        raise ValueError(f"kind must be 'state_dict' or 'torchscript', not {kind!r}")
    partial.replace(path)
    return path


def hf_checkpoint(name: str, cache_dir: Path) -> Path | None:
    """A transformers ``CLIPModel`` directory (``config.json`` + ``model.safetensors``) of ``checkpoint(name)``'s weights.

    The same tensors in transformers' layout (``clipkit.export.transformers``)
    and the same dtypes (the official fp16/fp32 mix), written on first use and
    checked against ``CLIPModel``'s keys; ``None`` for a ResNet, which
    transformers has no CLIP class for.
    """
    import torch

    if factories().OFFICIAL_CONFIGS[name].family != "vit":
        return None
    target = cache_dir / f"{slug(name)}-hf"
    if (target / "model.safetensors").exists():
        return target
    import clipkit
    from clipkit.export.transformers import config, openai_to_transformers
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    path = checkpoint(name, cache_dir)
    state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    tensors = openai_to_transformers(state_dict)
    hf_config = CLIPConfig.from_dict(config(clipkit.inspect(path)))
    with torch.device("meta"):
        expected = {k for k in CLIPModel(hf_config).state_dict() if not k.endswith("position_ids")}
    if set(tensors) != expected:
        raise RuntimeError(f"transformers layout mismatch: {sorted(set(tensors) ^ expected)[:8]}")
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(partial)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial / "model.safetensors"))
    partial.replace(target)
    return target


def openai_clip() -> types.ModuleType:
    """Import OpenAI's ``clip`` (openai-clip 1.0.1) the way the tests do (``tests/oracles.py``)."""
    return _tests_module("oracles").openai_clip()


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return text in ("-", "n/a")
    return True


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as info:
            return int(info.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None


def machine_info() -> dict[str, object]:
    """The date (UTC) and the machine: CPU, cores, memory, GPU, torch, Python, load average (it may be shared)."""
    import datetime

    import torch

    memory = _memory_gib()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} cores",
        "memory": f"{memory:.0f} GiB" if memory else "?",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def machine_summary() -> str:
    """One line: the date, CPU, memory, GPU, torch and Python versions and the load average (the machine is shared)."""
    info = machine_info()
    return (
        f"{info['date']}; {info['cpu']}, {info['memory']} RAM; GPU: {info['gpu']}; torch {info['torch']}; "
        f"Python {info['python']}; load average {info['load_average']}"
    )
