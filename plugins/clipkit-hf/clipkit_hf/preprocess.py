"""transformers' ``preprocessor_config.json`` (a ``CLIPImageProcessor``) as spec fields, and its exact transform.

``read_preprocessing`` maps ``image_mean``, ``image_std``, ``resample``,
``size`` and ``crop_size`` onto the spec's preprocessing fields, each recorded
with the file and key; a setting clipkit-hf cannot reproduce (no resize, no
crop, no normalisation, a crop that is not the model's input size) raises
``UnsupportedConfigError`` naming it. ``hf_transform`` is the processor's own
pipeline: RGB, shortest-edge resize, a center crop whose offset rounds down as
transformers' does, rescale and normalise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipkit.errors import UnsupportedConfigError
from clipkit.folder import contained, side_file
from clipkit.limits import json_typed, read_json
from clipkit.spec import Provenance, preprocessing_conventions

FILE = "preprocessor_config.json"
#: PIL's resampling filters, as transformers stores them, by clipkit's interpolation names
RESAMPLE: dict[int, str] = {3: "bicubic", 2: "bilinear", 0: "nearest"}


def _refuse(path: Path, key: str, value: Any, why: str) -> UnsupportedConfigError:
    return UnsupportedConfigError(f"{path}: {key}={value!r}: {why}; clipkit-hf cannot reproduce this preprocessing",
                                  field=key, path=str(path))


def _side(path: Path, key: str, value: Any, names: tuple[str, ...]) -> int:
    if isinstance(value, dict):
        sides = {value.get(name) for name in names if name in value}
        value = sides.pop() if len(sides) == 1 else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _refuse(path, key, value, "expected one positive side (square crops, shortest-edge resizes)")
    return value


def read_preprocessing(path: Path | None, resolution: int) -> tuple[dict[str, Any], dict[str, Provenance]]:
    """Spec values and provenance from the ``preprocessor_config.json`` beside ``path``; conventions when there is none."""
    directory = None if path is None else (Path(path) if Path(path).is_dir() else Path(path).parent)
    file = None if directory is None else directory / FILE
    if file is None or not side_file(file):
        return {}, preprocessing_conventions("transformers' CLIPImageProcessor defaults (no preprocessor_config.json)")
    raw = read_json(contained(directory, file, what="transformers' layout"))
    if not isinstance(raw, dict):
        raise _refuse(file, "(file)", type(raw).__name__, "expected a JSON object")
    for key in ("do_resize", "do_center_crop", "do_normalize", "do_rescale", "do_convert_rgb"):
        if raw.get(key, True) is not True:
            raise _refuse(file, key, raw[key], "clipkit-hf always resizes, crops, rescales, normalises and converts to RGB")
    rescale = json_typed(raw.get("rescale_factor", 1 / 255), float, what=f"{file}: rescale_factor")
    if abs(rescale - 1 / 255) > 1e-12:
        raise _refuse(file, "rescale_factor", raw["rescale_factor"], "only 1/255 is supported")
    crop = _side(file, "crop_size", raw.get("crop_size", resolution), ("height", "width"))
    if crop != resolution:
        raise _refuse(file, "crop_size", raw["crop_size"], f"the model takes {resolution} px images")
    resize = _side(file, "size", raw.get("size", resolution), ("shortest_edge",))
    resample = json_typed(raw.get("resample", 3), int, what=f"{file}: resample")  # true is not PIL filter 1
    if resample not in RESAMPLE:
        raise _refuse(file, "resample", resample, f"supported PIL filters: {sorted(RESAMPLE)}")
    values = {"image_mean": tuple(raw.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
              "image_std": tuple(raw.get("image_std", (0.26862954, 0.26130258, 0.27577711))),
              "interpolation": RESAMPLE[resample], "resize_mode": "shortest", "fill_color": 0,
              "resize_to": None if resize == crop else resize}
    keys = {"image_mean": "image_mean", "image_std": "image_std", "interpolation": "resample",
            "resize_mode": "size", "resize_to": "size"}
    provenance = {name: Provenance.config(FILE, key + ("" if key in raw else " (absent: transformers' default)"))
                  for name, key in keys.items()}
    provenance["fill_color"] = Provenance.unused("CLIPImageProcessor crops, it never pads")
    return values, provenance


class _FloorCenterCrop:
    """Center-crop to a square of ``size`` with transformers' offsets (``(h - size) // 2``, rounding down)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> Any:
        width, height = image.size
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")


def hf_transform(spec: Any) -> Any:
    """``CLIPImageProcessor``'s pipeline for ``spec``: RGB, shortest-edge resize, floor-offset center crop, normalise."""
    from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
             "nearest": InterpolationMode.NEAREST}
    return Compose([
        _to_rgb,
        Resize(spec.resize_to or spec.image_resolution, interpolation=modes[spec.interpolation]),
        _FloorCenterCrop(spec.image_resolution),
        ToTensor(),
        Normalize(spec.image_mean, spec.image_std),
    ])
