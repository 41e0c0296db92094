"""One measurement of ``bench_load.py``: a fresh interpreter that imports one loader and loads one checkpoint.

Run as ``python _load_child.py LOADER PATH DEVICE`` by ``bench_load.py``; it
imports nothing before ``torch`` but ``time``/``sys``, so the interpreter does
what a user's script does. It prints one ``RESULT {json}`` line:

- ``torch_s``: ``import torch``; ``import_s``: importing the loader's library;
- ``load_s``: the call that returns the model (and its preprocessing) on
  ``DEVICE``, in float32 on the CPU and float16 on CUDA (synchronised);
- ``ready_at``: the wall-clock time (``time.time()``) the model was ready; the
  parent subtracts the time it started the process: the *whole process*;
- ``peak_rss_mib``: the process's resident-memory high-water mark (``VmHWM``:
  interpreter, libraries and weights; memory-mapped file pages count once
  touched), and ``load_rss_mib``: the high-water mark during the load call
  minus the resident size before it (the mark is reset before the call);
- ``peak_gpu_mib``: ``torch.cuda.max_memory_allocated()`` over the load (CUDA).
"""

import sys
import time

T0 = time.perf_counter()


def _status_mib(field):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _maxrss_mib():
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _loader(name, device):
    """Import ``name``'s library (timed as *import*) and return ``path -> model`` (timed as *load*)."""
    import torch

    dtype = torch.float32 if device.type == "cpu" else torch.float16
    if name == "floor":  # what no loader can beat: read the file (memory-mapped) and cast each tensor once

        def load_floor(path):
            state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            return {key: value.to(device=device, dtype=dtype) for key, value in state_dict.items()}

        return load_floor
    if name in ("clipkit", "clipkit-jit"):
        import clipkit

        return lambda path: clipkit.load(path, device=device, jit=name == "clipkit-jit")[0]
    if name == "open_clip":
        import open_clip

        def load_open_clip(path):
            model = open_clip.load_openai_model(path, device=device.type)  # a str: it picks fp32 for "cpu"
            open_clip.image_transform(model.visual.image_size, is_train=False)
            return model

        return load_open_clip
    if name in ("openai", "openai-jit"):
        sys.path.insert(0, sys.argv[4])  # the tests folder: oracles.py imports ``clip`` as the tests do
        import oracles

        clip = oracles.openai_clip()

        def load_openai(path):
            if name == "openai-jit" or _is_archive(path):
                return clip.load(path, device=device, jit=name == "openai-jit")[0]
            # clip.load cannot read a plain state dict on current torch (see bench_load.py); its fallback branch:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            model = clip.model.build_model(state_dict).to(device)
            if device.type == "cpu":
                model.float()
            clip.clip._transform(model.visual.input_resolution)
            return model

        return load_openai
    if name == "transformers":
        from transformers import CLIPModel

        return lambda path: CLIPModel.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device)
    raise SystemExit(f"unknown loader {name!r}")


def _is_archive(path):
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def main():
    loader, path, device_name = sys.argv[1:4]
    import warnings

    warnings.simplefilter("ignore")
    import torch

    t_torch = time.perf_counter()
    device = torch.device(device_name)
    load = _loader(loader, device)
    t_import = time.perf_counter()
    rss_before = _status_mib("VmRSS") or 0.0
    import_peak = _status_mib("VmHWM")
    reset = _reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = load(path)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_load = time.perf_counter()
    ready_at = time.time()
    load_peak = _status_mib("VmHWM")
    tensors = list(model.values()) if isinstance(model, dict) else list(model.state_dict().values())
    floating = [t for t in tensors if t.is_floating_point()]
    result = {
        "torch_s": t_torch - T0,
        "import_s": t_import - t_torch,
        "load_s": t_load - t_import,
        "ready_at": ready_at,
        "peak_rss_mib": max(import_peak or 0.0, load_peak or 0.0) if load_peak is not None else _maxrss_mib(),
        "load_rss_mib": (load_peak - rss_before) if (load_peak is not None and reset) else None,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "params": sum(t.numel() for t in floating),
        "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in floating}),
        "dynamo_imported": "torch._dynamo" in sys.modules,
    }
    import json

    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
