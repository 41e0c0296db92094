"""``HFCLIPSpec`` and reading it off a transformers ``CLIPModel`` state dict (shapes) and its ``config.json``.

Shapes give every size. ``config.json``, when it sits next to the weights,
gives only what shapes cannot show: each tower's activation (``hidden_act``),
head counts (``num_attention_heads``), the LayerNorm epsilon and the
end-of-text token id (checked, see ``check_pooling``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from clipkit import ViTSpec, shapes
from clipkit.errors import ConfigurationError, StateDictError
from clipkit.folder import contained, side_file
from clipkit.limits import json_typed, read_json
from clipkit.spec import Provenance
from clipkit_hf.preprocess import read_preprocessing

__all__ = ["ACTIVATIONS", "HFCLIPSpec", "check_pooling", "infer_spec", "read_config"]

#: transformers ``hidden_act`` values clipkit's ViT can run, mapped to its ``quick_gelu`` flag.
ACTIVATIONS: dict[str, bool] = {"quick_gelu": True, "gelu": False}

_ADVICE = "The checkpoint is damaged or not a transformers CLIPModel; save it again with save_pretrained."


def _optional_bool(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"{type(instance).__name__}.{attribute.name} must be True, False or None, got {value!r}")


def _positive_float(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigurationError(f"{type(instance).__name__}.{attribute.name} must be a small positive number, got {value!r}")


@attrs.frozen(kw_only=True)
class HFCLIPSpec(ViTSpec):
    """A transformers-format CLIP ViT: the built-in ``ViTSpec`` sizes plus what ``config.json`` can add.

    ``quick_gelu`` is the text tower's activation and, unless
    ``vision_quick_gelu`` says otherwise, the vision tower's too (a
    ``config.json`` whose towers use different activations sets
    ``vision_quick_gelu``). ``layer_norm_eps`` is every LayerNorm's epsilon.
    """

    family: str = "hf-clip"
    vision_quick_gelu: bool | None = attrs.field(default=None, validator=_optional_bool)
    layer_norm_eps: float = attrs.field(default=1e-5, validator=_positive_float)

    @property
    def vision_activation_is_quick_gelu(self) -> bool:
        """Whether the vision tower uses QuickGELU (``vision_quick_gelu``, else ``quick_gelu``)."""
        return self.quick_gelu if self.vision_quick_gelu is None else self.vision_quick_gelu


def read_config(path: Path | None) -> dict[str, Any] | None:
    """The CLIP ``config.json`` next to the weights (in ``path`` if it is a directory, else beside the file), or ``None``.

    Returns ``{"path": Path, "text": {...}, "vision": {...}}`` with each tower's
    settings (``text_config_dict``/``vision_config_dict`` of older files merged
    over ``text_config``/``vision_config``). A ``config.json`` that is not a CLIP
    config is ignored; one that is not valid JSON, or larger or more deeply
    nested than ``clipkit.limits`` allows, raises ``CheckpointError``.
    """
    if path is None:
        return None
    path = Path(path)
    config_path = (path if path.is_dir() else path.parent) / "config.json"
    if not side_file(config_path):  # a FIFO, folder or device under the name is an error, not "no config"
        return None
    contained(config_path.parent, config_path, what="transformers' layout")
    raw = read_json(config_path)
    if not isinstance(raw, dict) or not (raw.get("model_type") == "clip" or "text_config" in raw or "vision_config" in raw):
        return None
    towers = {}
    for tower in ("text", "vision"):
        merged: dict[str, Any] = {}
        for key in (f"{tower}_config", f"{tower}_config_dict"):
            if isinstance(raw.get(key), dict):
                merged.update(raw[key])
        towers[tower] = merged
    return {"path": config_path, **towers}


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, dims: int) -> tuple[int, ...]:
    return shapes.shape(state_dict, key, dims=dims, advice=_ADVICE)


def _expect(state_dict: Mapping[str, torch.Tensor], key: str, expected: tuple[int, ...], why: str) -> None:
    shapes.expect(state_dict, key, expected, why, advice=_ADVICE)


def _layers(state_dict: Mapping[str, torch.Tensor], tower: str, width: int) -> int:
    prefix = f"{tower}_model.encoder.layers."
    layers = shapes.block_count(state_dict, prefix, advice=_ADVICE)
    if layers == 0:
        raise StateDictError(f"the state dict has no {tower} encoder layers {prefix}N. {_ADVICE}",
                             missing=[f"{prefix}0.self_attn.q_proj.weight"])
    for i in range(layers):
        block = f"{prefix}{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _expect(state_dict, f"{block}.self_attn.{name}.weight", (width, width), f"the {tower} width is {width}")
        fc1 = _shape(state_dict, f"{block}.mlp.fc1.weight", 2)
        if fc1 != (4 * width, width):
            raise StateDictError(
                f"{block}.mlp.fc1.weight has shape {fc1}: clipkit's ViT needs a 4 x width MLP "
                f"(intermediate_size {4 * width} for width {width}); this checkpoint's intermediate_size "
                f"{fc1[0]} cannot be loaded into it",
                mismatched=[(f"{block}.mlp.fc1.weight", (4 * width, width), fc1)],
            )
    return layers


def _activation(config: dict[str, Any] | None, tower: str) -> bool:
    if config is None or "hidden_act" not in config[tower]:
        return True  # transformers' CLIP default, and OpenAI's
    act = json_typed(config[tower]["hidden_act"], str, what=f"{config['path']}: {tower}_config.hidden_act")
    if act not in ACTIVATIONS:
        raise ConfigurationError(
            f"{config['path']}: {tower}_config.hidden_act is {act!r}; clipkit-hf runs "
            f"{' and '.join(map(repr, ACTIVATIONS))} (the activations of clipkit's ViT)"
        )
    return ACTIVATIONS[act]


def _typed(config: dict[str, Any], tower: str, key: str, default: Any, kind: type) -> Any:
    """``{tower}_config.{key}`` (``default`` when absent or null), strictly of JSON type ``kind``."""
    value = config[tower].get(key)
    return default if value is None else json_typed(value, kind, what=f"{config['path']}: {tower}_config.{key}")


def _heads(config: dict[str, Any] | None, tower: str, width: int) -> int:
    heads = None if config is None else _typed(config, tower, "num_attention_heads", None, int)
    return shapes.default_heads(width) if heads is None else heads


def _layer_norm_eps(config: dict[str, Any] | None) -> float:
    if config is None:
        return 1e-5
    text = float(_typed(config, "text", "layer_norm_eps", 1e-5, float))
    vision = float(_typed(config, "vision", "layer_norm_eps", 1e-5, float))
    if text != vision:
        raise ConfigurationError(
            f"{config['path']}: the towers use different layer_norm_eps ({text} text, {vision} vision); "
            "clipkit-hf builds every LayerNorm with one epsilon"
        )
    return text


def check_pooling(config: dict[str, Any] | None, vocab_size: int) -> None:
    """Check that pooling at the row's highest token id is transformers' pooling for this checkpoint.

    transformers reads each text at its first ``eos_token_id`` (or, for
    configs with the legacy ``eos_token_id == 2``, at the highest id, the row's
    ``argmax``); clipkit's model always reads at the ``argmax``. With OpenAI's
    vocabulary end-of-text is the highest id (``vocab_size - 1``, 49407), so the
    first end-of-text token *is* the first maximum (``argmax`` returns the first
    of equal maxima): the two agree. A config with any other end-of-text id
    raises ``ConfigurationError``.
    """
    if config is None:
        return
    eos = _typed(config, "text", "eos_token_id", None, int)
    if eos is not None and eos not in (2, vocab_size - 1):
        raise ConfigurationError(
            f"{config['path']}: text_config.eos_token_id is {eos}, not the highest token id {vocab_size - 1}; "
            "clipkit's text tower reads each text at its highest token id, so this tokenizer is not supported"
        )


def infer_spec(
    state_dict: Mapping[str, torch.Tensor], config: dict[str, Any] | None = None, path: Path | None = None
) -> HFCLIPSpec:
    """Read an ``HFCLIPSpec`` off a transformers ``CLIPModel`` state dict, with ``config`` from ``read_config``.

    ``path`` is where the weights were read (for ``preprocessor_config.json``
    beside them). Every field records its provenance. Raises ``StateDictError``
    naming the key whose shape disagrees with the rest, and
    ``ConfigurationError`` for settings clipkit's ViT cannot run
    (an activation other than QuickGELU/GELU, per-tower LayerNorm epsilons,
    an end-of-text id that is not the highest token id).
    """
    vocab_size, text_width = _shape(state_dict, "text_model.embeddings.token_embedding.weight", 2)
    context_length, _ = _shape(state_dict, "text_model.embeddings.position_embedding.weight", 2)
    _expect(state_dict, "text_model.embeddings.position_embedding.weight", (context_length, text_width),
            f"the text width is {text_width}")
    _expect(state_dict, "text_model.final_layer_norm.weight", (text_width,), f"the text width is {text_width}")
    embed_dim, _ = _shape(state_dict, "text_projection.weight", 2)
    _expect(state_dict, "text_projection.weight", (embed_dim, text_width), f"the text width is {text_width}")

    conv = _shape(state_dict, "vision_model.embeddings.patch_embedding.weight", 4)
    vision_width, channels, patch, patch_w = conv
    if channels != 3 or patch != patch_w:
        raise StateDictError(
            f"vision_model.embeddings.patch_embedding.weight has shape {conv}: expected 3-channel square patches. {_ADVICE}",
            mismatched=[("vision_model.embeddings.patch_embedding.weight", (vision_width, 3, patch, patch), conv)],
        )
    _expect(state_dict, "vision_model.embeddings.class_embedding", (vision_width,), f"the vision width is {vision_width}")
    grid = shapes.square_side(state_dict, "vision_model.embeddings.position_embedding.weight", vision_width,
                              "patches", advice=_ADVICE)
    _expect(state_dict, "visual_projection.weight", (embed_dim, vision_width),
            f"text_projection.weight says the joint embedding is {embed_dim} wide")

    check_pooling(config, vocab_size)
    text_quick = _activation(config, "text")
    vision_quick = _activation(config, "vision")
    eps = _layer_norm_eps(config)
    preprocessing, provenance = read_preprocessing(path, patch * grid)
    provenance.update(_provenance(config))
    return HFCLIPSpec(
        image_resolution=patch * grid,
        embed_dim=embed_dim,
        context_length=context_length,
        vocab_size=vocab_size,
        text_width=text_width,
        text_layers=_layers(state_dict, "text", text_width),
        text_heads=_heads(config, "text", text_width),
        quick_gelu=text_quick,
        vision_width=vision_width,
        vision_layers=_layers(state_dict, "vision", vision_width),
        vision_heads=_heads(config, "vision", vision_width),
        vision_patch_size=patch,
        vision_quick_gelu=None if vision_quick == text_quick else vision_quick,
        layer_norm_eps=eps,
        text_norm_eps=eps,
        vision_norm_eps=eps,
        provenance=provenance,
        **preprocessing,
    )


#: fields transformers' CLIPModel layout fixes (read off its keys), with the key that shows each
_BY_LAYOUT: dict[str, str] = {
    "family": "text_model.embeddings.token_embedding.weight and vision_model.embeddings.patch_embedding.weight",
    "image_resolution": "vision_model.embeddings.position_embedding.weight",
    "vision_patch_size": "vision_model.embeddings.patch_embedding.weight",
    "vision_width": "vision_model.embeddings.patch_embedding.weight",
    "vision_layers": "vision_model.encoder.layers.N", "vision_mlp_width": "vision_model.encoder.layers.0.mlp.fc1.weight",
    "text_width": "text_model.embeddings.token_embedding.weight",
    "vocab_size": "text_model.embeddings.token_embedding.weight",
    "context_length": "text_model.embeddings.position_embedding.weight",
    "text_layers": "text_model.encoder.layers.N", "text_mlp_width": "text_model.encoder.layers.0.mlp.fc1.weight",
    "embed_dim": "text_projection.weight", "text_proj": "text_projection.weight (no bias)",
    "text_layer_scale": "transformers' CLIPModel layout (no layer scale)",
    "vision_layer_scale": "transformers' CLIPModel layout (no layer scale)",
    "logit_bias": "no logit_bias", "vision_ln_pre": "vision_model.pre_layrnorm.weight",
    "vision_attn_pool_queries": "transformers' CLIPModel layout (class-token pooling)",
    "vision_pool": "transformers' CLIPModel layout (class-token pooling)",
    "vision_final_ln_after_pool": "transformers' CLIPModel layout (post_layernorm on the class token)",
    "text_causal": "transformers' CLIPModel layout (causal text attention)",
}
#: fields config.json settles, by the (tower, key) it reads them from
_BY_CONFIG: dict[str, tuple[str, str]] = {
    "quick_gelu": ("text", "hidden_act"), "vision_quick_gelu": ("vision", "hidden_act"),
    "text_heads": ("text", "num_attention_heads"), "vision_heads": ("vision", "num_attention_heads"),
    "layer_norm_eps": ("text", "layer_norm_eps"), "text_norm_eps": ("text", "layer_norm_eps"),
    "vision_norm_eps": ("vision", "layer_norm_eps"), "text_pool": ("text", "eos_token_id"),
}


def _provenance(config: dict[str, Any] | None) -> dict[str, Provenance]:
    """Where each non-preprocessing field of an ``HFCLIPSpec`` comes from, given the ``config.json`` read (or none)."""
    found = {name: Provenance.shapes(key) for name, key in _BY_LAYOUT.items()}
    found["vision_attn_pool_heads"] = Provenance.unused("no attentional pooler")
    found["text_eos_id"] = Provenance.unused("text_pool is 'argmax'")
    for tower in ("text", "vision"):
        found[f"{tower}_gelu_approximate"] = Provenance.unused("hidden_act is quick_gelu or exact gelu")
    for name, (tower, key) in _BY_CONFIG.items():
        if config is not None:
            absent = "" if key in config[tower] else " (absent: transformers' default)"
            found[name] = Provenance.config(config["path"].name, f"{tower}_config.{key}{absent}")
        else:
            found[name] = Provenance.convention(f"transformers' CLIPConfig default for {tower}_config.{key} "
                                                "(no config.json beside the weights)")
    return found
