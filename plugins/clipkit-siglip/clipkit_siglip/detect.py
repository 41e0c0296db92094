"""Reading a ``SiglipSpec`` off a transformers ``SiglipModel`` state dict and the files saved beside it.

``infer_spec`` reads every size from shapes (``clipkit.shapes``) and settles
the rest from ``config.json``, the image processor's config and the tokenizer
files, recording each field's provenance. What clipkit-siglip cannot build — SigLIP 2's NaFlex (variable
resolution) towers, a vision tower without its attention-pooling head, an
unknown activation or preprocessing step — is an ``UnsupportedConfigError``
naming the field, never an approximate load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipkit import shapes
from clipkit.errors import CheckpointError, UnsupportedConfigError
from clipkit.spec import Provenance
from clipkit_siglip.files import read_json
from clipkit_siglip.model import ACTIVATIONS
from clipkit_siglip.spec import INTERPOLATIONS, SiglipSpec, siglip_heads
from clipkit_siglip.tokenizer import SPIECE

__all__ = ["ADVICE", "infer_spec"]

ADVICE = "The checkpoint is damaged or not a transformers SiglipModel; save it again with save_pretrained."
_HEAD = "vision_model.head.probe"
_RESCALE = 1 / 255
_IMAGE_PROCESSORS = ("SiglipImageProcessor", "SiglipImageProcessorFast", "SiglipImageProcessorPil")


def _directory(path: Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    return path if path.is_dir() else path.parent


class _Fields:
    """Spec values and their provenance, collected field by field."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.provenance: dict[str, Provenance] = {}

    def set(self, name: str, value: Any, provenance: Provenance) -> Any:
        self.values[name] = value
        self.provenance[name] = provenance
        return value

    def setting(self, name: str, config: Mapping[str, Any] | None, file: Path | None, key: str,
                default: Any, convention: str, *, config_default: Any = None) -> Any:
        """From the config file when there is one, else ``default`` (provenance ``CONVENTION``, with ``convention``).

        A config file without ``key`` means the format's own default,
        ``config_default`` (transformers' config class default) when given.
        """
        if config is not None:
            short = key.split(".")[-1]
            if short in config:
                return self.set(name, config[short], Provenance.config(file, key))
            if config_default is not None:
                return self.set(name, config_default, Provenance.config(file, f"{key} (absent: transformers' default)"))
        return self.set(name, default, Provenance.convention(convention))


def _tower_sizes(fields: _Fields, state_dict: Mapping[str, torch.Tensor], tower: str) -> int:
    """Width, depth and MLP width of one tower's encoder; checks every block's shapes."""
    prefix = f"{tower}_model.encoder.layers."
    layers = shapes.block_count(state_dict, prefix, advice=ADVICE)
    if not layers:
        raise shapes.shape_mismatch(f"{prefix}0", (), (1,), f"the {tower} encoder has no layers", advice=ADVICE)
    fc1 = f"{prefix}0.mlp.fc1.weight"
    mlp_width, width = shapes.shape(state_dict, fc1, dims=2, advice=ADVICE)
    for i in range(layers):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.expect(state_dict, f"{prefix}{i}.self_attn.{name}.weight", (width, width),
                          f"the {tower} width is {width}", advice=ADVICE)
        shapes.expect(state_dict, f"{prefix}{i}.mlp.fc1.weight", (mlp_width, width),
                      f"{fc1} says the {tower} MLP is {mlp_width} wide", advice=ADVICE)
    fields.set(f"{tower}_width", width, Provenance.shapes(fc1))
    fields.set(f"{tower}_layers", layers, Provenance.shapes(f"{prefix}N"))
    fields.set(f"{tower}_mlp_width", mlp_width, Provenance.shapes(fc1))
    return width


def _model_config(directory: Path | None) -> tuple[Path | None, dict[str, Any] | None]:
    if directory is None:
        return None, None
    path = directory / "config.json"
    config = read_json(path)
    if config is None or not (config.get("model_type") in ("siglip", "siglip2") or "vision_config" in config):
        return None, None
    for key in ("text_config", "vision_config"):
        if not isinstance(config.get(key, {}), dict):
            raise CheckpointError(f"{path}: {key} is {config[key]!r}, not an object; fix or delete the file")
    return path, config


def _vision_checks(state_dict: Mapping[str, torch.Tensor], config_path: Path | None, config: dict | None) -> None:
    patch = shapes.shape(state_dict, "vision_model.embeddings.patch_embedding.weight", advice=ADVICE)
    if len(patch) != 4 or (config or {}).get("model_type") == "siglip2":
        raise UnsupportedConfigError(
            "this is a SigLIP 2 NaFlex checkpoint (variable resolution: a linear patch embedding over packed patches, "
            "model_type 'siglip2'); clipkit-siglip builds fixed-resolution SiglipModel towers only. Use a "
            "fixed-resolution SigLIP 2 release (e.g. google/siglip2-base-patch16-224), saved as SiglipModel",
            field="model_type", path=str(config_path) if config_path else None,
        )
    if _HEAD not in state_dict:
        raise UnsupportedConfigError(
            f"the vision tower has no attention-pooling head ({_HEAD} is missing; vision_config.vision_use_head "
            "is false), so it has no image embedding to compare with text; clipkit-siglip needs the head",
            field="vision_config.vision_use_head", path=str(config_path) if config_path else None,
        )


def _image_processor_config(directory: Path | None) -> tuple[Path | None, str, dict[str, Any] | None]:
    """The image processor's settings: ``preprocessor_config.json``, or transformers 5's ``processor_config.json``."""
    if directory is None:
        return None, "", None
    path = directory / "preprocessor_config.json"
    config = read_json(path)
    if config is not None:
        return path, "", config
    path = directory / "processor_config.json"
    nested = (read_json(path) or {}).get("image_processor")
    return (path, "image_processor.", nested) if isinstance(nested, dict) else (None, "", None)


def _preprocessing(fields: _Fields, directory: Path | None, resolution: int) -> None:
    path, prefix, config = _image_processor_config(directory)
    if config is not None:
        def refuse(key: str, why: str) -> UnsupportedConfigError:
            return UnsupportedConfigError(f"{path}: {prefix}{key} {why}", field=prefix + key, path=str(path))

        kind = config.get("image_processor_type", "SiglipImageProcessor")
        if kind not in _IMAGE_PROCESSORS:
            raise refuse("image_processor_type", f"is {kind!r}; clipkit-siglip implements {', '.join(_IMAGE_PROCESSORS)} "
                         "(SigLIP 2's NaFlex processor packs variable-size patch sequences)")
        for flag in ("do_resize", "do_rescale", "do_normalize"):
            if config.get(flag, True) is not True:
                raise refuse(flag, f"is {config[flag]!r}; clipkit-siglip's transform always resizes, rescales and "
                             "normalises")
        factor = config.get("rescale_factor", _RESCALE)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or abs(factor - _RESCALE) > 1e-9:
            raise refuse("rescale_factor", f"{factor!r} is not 1/255")
        size = config.get("size", {"height": resolution, "width": resolution})
        if not isinstance(size, dict) or (size.get("height"), size.get("width")) != (resolution, resolution):
            raise refuse("size", f"{size} is not the model's {resolution}x{resolution} input (SigLIP's fixed-"
                         "resolution towers take a squash resize to their resolution)")
    convention = "SigLIP's preprocessing (squash to the square, mean and std 0.5, bicubic)"
    half = (0.5, 0.5, 0.5)  # also SiglipImageProcessor's defaults, for a file that leaves them out
    fields.setting("image_mean", config, path, prefix + "image_mean", half, convention, config_default=half)
    fields.setting("image_std", config, path, prefix + "image_std", half, convention, config_default=half)
    code = fields.setting("interpolation", config, path, prefix + "resample", INTERPOLATIONS["bicubic"], convention,
                          config_default=INTERPOLATIONS["bicubic"])
    names = {number: name for name, number in INTERPOLATIONS.items()}
    if isinstance(code, bool) or not isinstance(code, int) or code not in names:
        raise UnsupportedConfigError(f"{path}: {prefix}resample {code!r} is not a PIL resampling code (0-5)",
                                     field=prefix + "resample", path=str(path))
    fields.values["interpolation"] = names[code]
    if config is not None:
        fields.set("resize_mode", "squash", Provenance.config(path, prefix + "size"))
    else:
        fields.set("resize_mode", "squash", Provenance.convention(convention))
    fields.set("fill_color", 0, Provenance.unused("SigLIP squashes the image to the square: nothing is padded"))
    fields.set("resize_to", None, Provenance.unused("SigLIP squashes the image to the square: nothing is cropped"))


def _tokenizer(fields: _Fields, directory: Path | None) -> None:
    if directory is None:
        return
    tokenizer_config = read_json(directory / "tokenizer_config.json") or {}
    has_spiece = (directory / SPIECE).is_file()
    name = tokenizer_config.get("tokenizer_class") or ("SiglipTokenizer" if has_spiece else None)
    if name is None and not (directory / "tokenizer.json").is_file():
        return
    fields.set("tokenizer_dir", str(directory), Provenance.config(directory, "tokenizer files"))
    fields.set("tokenizer_class", name, Provenance.config(directory / "tokenizer_config.json", "tokenizer_class"))


def _resolution(fields: _Fields, patch: int, side: int, config_path: Path | None, config: dict | None,
                directory: Path | None) -> None:
    """The input size: ``vision_config.image_size`` (transformers' 224 when the file leaves it out), else the
    processor's size, else ``patch * side``.

    The patch convolution drops a remainder, so the shapes only bound it: a
    ``side x side`` grid of ``patch`` pixels takes ``patch * side`` up to
    ``patch * side + patch - 1`` pixels (so400m-patch14-384: 27 patches of 14 for 384).
    """
    if config is not None:
        file, key = config_path, "vision_config.image_size"
        image_size = (config.get("vision_config") or {}).get("image_size", 224)
    else:
        file, prefix, processor = _image_processor_config(directory)
        key, size = prefix + "size", (processor or {}).get("size")
        image_size = size.get("height") if isinstance(size, dict) and size.get("height") == size.get("width") else None
    if image_size is None:
        fields.set("image_resolution", patch * side, Provenance.convention(
            f"the smallest input a {side}x{side} grid of {patch}px patches covers (up to {patch - 1}px more also fit)"))
        return
    if not isinstance(image_size, int) or image_size // patch != side:
        raise UnsupportedConfigError(
            f"{file}: {key} is {image_size!r}, but the weights hold {side}x{side} positions of {patch}px patches, "
            f"for {patch * side} to {patch * side + patch - 1}px images", field=key, path=str(file))
    fields.set("image_resolution", image_size, Provenance.config(file, key))


def infer_spec(state_dict: Mapping[str, torch.Tensor], path: Path | None = None) -> SiglipSpec:
    """The ``SiglipSpec`` of a transformers ``SiglipModel`` state dict and the files in (or beside) ``path``."""
    directory = _directory(path)
    config_path, config = _model_config(directory)
    _vision_checks(state_dict, config_path, config)
    fields = _Fields()
    text_width = _tower_sizes(fields, state_dict, "text")
    vision_width = _tower_sizes(fields, state_dict, "vision")

    vocab = "text_model.embeddings.token_embedding.weight"
    fields.set("vocab_size", shapes.shape(state_dict, vocab, dims=2, advice=ADVICE)[0], Provenance.shapes(vocab))
    positions = "text_model.embeddings.position_embedding.weight"
    context, _ = shapes.shape(state_dict, positions, dims=2, advice=ADVICE)
    fields.set("context_length", context, Provenance.shapes(positions))
    head = "text_model.head.weight"
    embed_dim, _ = shapes.shape(state_dict, head, dims=2, advice=ADVICE)
    shapes.expect(state_dict, head, (embed_dim, text_width), f"the text width is {text_width}", advice=ADVICE)
    if embed_dim != vision_width:
        raise shapes.shape_mismatch(head, (embed_dim, text_width), (vision_width, text_width),
                                    f"the image embedding (the pooled vision width) is {vision_width} wide",
                                    advice=ADVICE)
    fields.set("embed_dim", embed_dim, Provenance.shapes(head))

    conv = "vision_model.embeddings.patch_embedding.weight"
    _, channels, patch, patch_w = shapes.shape(state_dict, conv, dims=4, advice=ADVICE)
    if channels != 3 or patch != patch_w:
        raise shapes.shape_mismatch(conv, (vision_width, channels, patch, patch_w), (vision_width, 3, patch, patch),
                                    "the patch embedding takes RGB images in square patches", advice=ADVICE)
    grid_key = "vision_model.embeddings.position_embedding.weight"
    patches, _ = shapes.shape(state_dict, grid_key, dims=2, advice=ADVICE)
    side = round(patches**0.5)
    if side * side != patches:
        raise shapes.shape_mismatch(grid_key, (patches, vision_width), (side * side, vision_width),
                                    "one position per patch of a square grid", advice=ADVICE)
    fields.set("vision_patch_size", patch, Provenance.shapes(conv))
    _resolution(fields, patch, side, config_path, config, directory)
    for tower, width in (("text", text_width), ("vision", vision_width)):
        settings = (config.get(f"{tower}_config") or {}) if config is not None else None
        heads, why = siglip_heads(width)
        fields.setting(f"{tower}_heads", settings, config_path, f"{tower}_config.num_attention_heads", heads, why,
                       config_default=12)
        act = fields.setting(f"{tower}_act", settings, config_path, f"{tower}_config.hidden_act",
                             "gelu_pytorch_tanh", "SigLIP's tanh-approximated GELU", config_default="gelu_pytorch_tanh")
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise UnsupportedConfigError(
                f"{config_path}: {tower}_config.hidden_act is {act!r}; clipkit-siglip runs {', '.join(ACTIVATIONS)}",
                field=f"{tower}_config.hidden_act", path=str(config_path))
        fields.setting(f"{tower}_layer_norm_eps", settings, config_path, f"{tower}_config.layer_norm_eps", 1e-6,
                       "SigLIP's LayerNorm epsilon 1e-6", config_default=1e-6)
    _preprocessing(fields, directory, fields.values["image_resolution"])
    _tokenizer(fields, directory)
    return SiglipSpec(**fields.values, provenance=fields.provenance)
