"""Real checkpoints of every format clipkit reads, built in code: the seeds the fuzzer mutates.

``build_seeds(root)`` writes, under ``root``, one checkpoint of each kind and
returns ``{kind: Seed}``: a ``torch.save`` zip and a legacy pickle (a training
checkpoint of the tiny ViT with numpy extras), a TorchScript archive (a
scripted module tree), a safetensors file, a sharded safetensors folder with
its index, an open_clip folder (``open_clip_config.json`` beside
``open_clip_model.safetensors``) and a transformers folder (``config.json``,
``model.safetensors``, saved by transformers itself) and, when clipkit-siglip
is installed, a SigLIP folder with its processor and tokenizer files. Each loads cleanly; the
fuzzer checks that every mutation of it loads or raises a ``ClipkitError``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import factories

CONFIG = factories.TINY_VIT


@dataclass(frozen=True)
class Seed:
    """One seed: its kind, its path (a file or a folder), and the call that loads it (``load`` or ``read``)."""

    kind: str
    path: Path
    call: str = "load"


def _open_clip_config() -> dict:
    c = CONFIG
    return {
        "model_cfg": {
            "embed_dim": c.embed_dim,
            "quick_gelu": True,
            "vision_cfg": {"image_size": c.image_resolution, "layers": c.vision_layers, "width": c.vision_width,
                           "patch_size": c.vision_patch_size},
            "text_cfg": {"context_length": c.context_length, "vocab_size": c.vocab_size, "width": c.text_width,
                         "heads": c.text_heads, "layers": c.text_layers},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }


def _transformers_folder(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=99, bos_token_id=98,
                         pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder


def _scripted(path: Path) -> Path:
    inner = torch.nn.Sequential(torch.nn.Linear(4, 2))
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), inner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def build_seeds(root: Path, *, release: bool = False) -> dict[str, Seed]:
    """Write one real checkpoint of every kind under ``root``; return them by kind.

    ``release=True`` adds a TorchScript archive traced like the official
    releases (kind ``"release"``, loaded through the whole pipeline with
    ``jit=False``); tracing takes a few seconds, so only the long run asks.
    """
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    weights = factories.make_state_dict(CONFIG)
    training = {"state_dict": weights, "epoch": np.int64(3), "loss": np.float32(0.25), "curve": np.arange(4.0)}
    seeds: dict[str, Seed] = {}

    torch.save(training, root / "zip.pt")
    seeds["torch-zip"] = Seed("torch-zip", root / "zip.pt")
    torch.save(training, root / "legacy.pt", _use_new_zipfile_serialization=False)
    seeds["legacy"] = Seed("legacy", root / "legacy.pt")
    seeds["torchscript"] = Seed("torchscript", _scripted(root / "scripted.pt"), call="read")
    if release:
        import jit_fixtures

        with jit_fixtures.quiet_torchscript():
            jit_fixtures.make_release_archive(CONFIG, root / "release.pt")
        seeds["release"] = Seed("release", root / "release.pt")
    contiguous = {k: v.contiguous() for k, v in weights.items()}
    save_file(contiguous, str(root / "model.safetensors"))
    seeds["safetensors"] = Seed("safetensors", root / "model.safetensors")

    sharded = root / "sharded"
    sharded.mkdir()
    keys = list(contiguous)
    names = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
             "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, part in names.items():
        save_file({k: contiguous[k] for k in part}, str(sharded / name))
    index = {"metadata": {"total_size": sum(v.nbytes for v in contiguous.values())},
             "weight_map": {k: name for name, part in names.items() for k in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    seeds["sharded"] = Seed("sharded", sharded)

    open_clip = root / "open_clip"
    open_clip.mkdir()
    (open_clip / "open_clip_config.json").write_text(json.dumps(_open_clip_config(), indent=2))
    save_file(contiguous, str(open_clip / "open_clip_model.safetensors"))
    seeds["open_clip"] = Seed("open_clip", open_clip)

    seeds["transformers"] = Seed("transformers", _transformers_folder(root / "transformers"))
    siglip = _siglip_folder(root / "siglip")
    if siglip is not None:
        seeds["siglip"] = Seed("siglip", siglip)
    return seeds


def _siglip_folder(folder: Path) -> Path | None:
    """A SigLIP folder as the Hub has it (config, weights, tokenizer, processor), when clipkit-siglip is installed."""
    import importlib.util

    reference = Path(__file__).resolve().parents[1] / "plugins" / "clipkit-siglip" / "tests" / "siglip_reference.py"
    if importlib.util.find_spec("clipkit_siglip") is None or not reference.is_file():
        return None
    spec = importlib.util.spec_from_file_location("siglip_reference", reference)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.save_checkpoint(module.make_siglip(layers=1), folder)
    return folder
