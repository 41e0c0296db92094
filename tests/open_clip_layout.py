"""open_clip 3.3 as the oracle: its model configs, models built from them, and checkpoints saved in its hub layout.

Weights are random (open_clip's own initialisation) and saved the way open_clip
publishes to the Hugging Face Hub: ``open_clip_config.json`` written by
open_clip's ``save_config_for_hf`` beside ``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``. To stay fast, ``cut`` keeps every width, head
width, MLP ratio, patch size, activation and context length of a config and
cuts the depth (one block per tower, one bottleneck per ResNet stage), the
vocabulary (1000 tokens) and the image (a 2x2 grid of patches, 64 px for a
ResNet): the shapes show all three, and ``full_size_spec`` checks the full-size
configs' translation without computing anything.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

VOCAB = 1000

#: what makes a config something clipkit cannot build, in the order a config is checked
UNBUILDABLE_TOP = ("custom_text", "multimodal_cfg")
UNBUILDABLE_TOWER = ("timm_model_name", "hf_model_name", "hf_tokenizer_name")


def config_dir() -> Path:
    """open_clip's ``model_configs`` directory."""
    import open_clip

    return Path(open_clip.__file__).parent / "model_configs"


def all_configs() -> dict[str, dict[str, Any]]:
    """Every model config open_clip ships, by name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(config_dir().glob("*.json"))}


def refusal_fields(cfg: dict[str, Any]) -> set[str]:
    """The ``model_cfg`` fields that make ``cfg`` unbuildable by clipkit (empty: clipkit builds it)."""
    fields = {f"model_cfg.{key}" for key in UNBUILDABLE_TOP if cfg.get(key)}
    for tower in ("vision_cfg", "text_cfg"):
        fields |= {f"model_cfg.{tower}.{key}" for key in UNBUILDABLE_TOWER if cfg.get(tower, {}).get(key)}
    return fields


def cut(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``cfg`` one block deep per tower, a 1000-token vocabulary and a 2x2 grid; the rest as it is."""
    cfg = copy.deepcopy(cfg)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    resnet = isinstance(vision["layers"], (list, tuple))
    vision["layers"] = [1, 1, 1, 1] if resnet else 1
    vision["image_size"] = 64 if resnet else 2 * vision.get("patch_size", 16)
    text["layers"] = 1
    text["vocab_size"] = VOCAB
    return cfg


def meta_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """open_clip's ``CLIP`` for the full-size ``cfg``, on the meta device (nothing allocated or computed)."""
    import open_clip

    with torch.device("meta"):
        return open_clip.model.CLIP(**copy.deepcopy(cfg))


def build(cfg: dict[str, Any], *, seed: int = 0, preprocess: dict[str, Any] | None = None) -> torch.nn.Module:
    """open_clip's ``CLIP`` for ``cfg`` (random weights, eval, fp32), with its preprocessing config attached."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**copy.deepcopy(cfg)).eval()
    for param in (model.logit_scale, model.logit_bias):
        if param is not None:
            param.data.normal_()  # not the init constant, so a wrong key or a dropped bias shows
    pp = asdict(PreprocessCfg(size=cfg["vision_cfg"].get("image_size", 224)))
    pp.update(preprocess or {})
    open_clip.model.set_model_preprocess_cfg(model, pp)
    return model


def save_hub_layout(model: torch.nn.Module, cfg: dict[str, Any], directory: Path, *, weights: str = "safetensors",
                    preprocess: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as open_clip publishes to the Hub; ``preprocess`` adds preprocess_cfg entries open_clip keeps."""
    import safetensors.torch
    from open_clip.push_to_hf_hub import save_config_for_hf

    directory.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.contiguous() for key, value in model.state_dict().items()}
    if weights == "safetensors":
        safetensors.torch.save_file(state_dict, directory / "open_clip_model.safetensors")
    else:
        torch.save(state_dict, directory / "open_clip_pytorch_model.bin")
    save_config_for_hf(model, directory / "open_clip_config.json", cfg)
    if preprocess:  # fields save_config_for_hf leaves out (fill_color) go in as open_clip reads them
        config = json.loads((directory / "open_clip_config.json").read_text())
        config["preprocess_cfg"].update(preprocess)
        (directory / "open_clip_config.json").write_text(json.dumps(config))
    return directory


def inputs(cfg: dict[str, Any], *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One image at the config's size and two texts at its context length, each with its end-of-text token."""
    generator = torch.Generator().manual_seed(seed)
    size = cfg["vision_cfg"].get("image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    images = torch.randn(1, 3, height, width, generator=generator)
    context = cfg["text_cfg"].get("context_length", 77)
    tokens = torch.randint(1, VOCAB - 2, (2, context), generator=generator)
    eos = cfg["text_cfg"].get("eos_id", VOCAB - 1) if cfg["text_cfg"].get("pool_type") == "eos" else VOCAB - 1
    for row, end in enumerate((context // 2, context - 1)):
        tokens[row, end] = eos
        tokens[row, end + 1:] = 0
    return images, tokens


def reference_outputs(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """open_clip's ``encode_image``, ``encode_text`` and logits (``get_logits``' formula on those features)."""
    import torch.nn.functional as F

    with torch.no_grad():
        image = model.encode_image(images)
        text = model.encode_text(tokens)
        logits = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        if model.logit_bias is not None:
            logits = logits + model.logit_bias
    return {"image": image, "text": text, "logits": logits}


def clipkit_outputs(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """clipkit's ``encode_image``, ``encode_text`` and ``forward``'s logits per image."""
    with torch.no_grad():
        return {"image": model.encode_image(images), "text": model.encode_text(tokens),
                "logits": model(images, tokens)[0]}
