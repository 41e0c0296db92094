"""clipkit's spec sidecar: settles the fields a checkpoint's shapes cannot show from ``<weights>.clipkit.json``.

``clipkit export --format safetensors`` (``clipkit.export.to_safetensors``)
writes ``NAME.safetensors`` and ``NAME.clipkit.json``; the sidecar's
``fields`` are the spec values detection would otherwise assume. This plugin
reads them back for any family, recorded as coming from a config file, so the
reload warns about nothing. A sidecar for another family, or with a field the
spec does not have, is a ``ConfigurationError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipkit.errors import CheckpointError, ConfigurationError
from clipkit.hookspecs import hookimpl
from clipkit.limits import read_json
from clipkit.spec import ArchSpec, Provenance

__all__ = ["SIDECAR_FORMAT", "SIDECAR_SUFFIX", "configure_spec", "read_sidecar", "sidecar_path"]

SIDECAR_FORMAT = "clipkit-spec-sidecar/1"
SIDECAR_SUFFIX = ".clipkit.json"


def sidecar_path(weights: Path) -> Path:
    """Where the sidecar of the weights file ``weights`` lives: the same name with the suffix ``.clipkit.json``."""
    return weights.with_suffix(SIDECAR_SUFFIX)


def _value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def read_sidecar(spec: ArchSpec, path: Path | None) -> ArchSpec | None:
    """``spec`` with the fields of the sidecar beside the weights file ``path``, or ``None`` when there is none."""
    if path is None or not Path(path).is_file():
        return None
    file = sidecar_path(Path(path))
    if not file.is_file():
        return None
    data = read_json(file, what=f"clipkit sidecar {file}")
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT or not isinstance(data.get("fields"), dict):
        raise CheckpointError(f"{file} is not a {SIDECAR_FORMAT} file; delete it or export the model again")
    if data.get("family") != spec.family:
        raise ConfigurationError(
            f"{file} describes a {data.get('family')!r} model but the weights beside it are {spec.family!r}; "
            "the sidecar belongs to other weights: delete it or export the model again"
        )
    known = spec.to_dict()
    unknown = sorted(set(data["fields"]) - set(known))
    if unknown:
        raise ConfigurationError(f"{file} sets {', '.join(unknown)}, which a {type(spec).__name__} does not have")
    values = {name: _value(value) for name, value in data["fields"].items()}
    return spec.with_values(values, {name: Provenance.config(file, f"fields.{name}") for name in values})


@hookimpl
def configure_spec(spec: ArchSpec, path: Path | None) -> ArchSpec | None:
    """Settle any family's spec from the clipkit sidecar (``NAME.clipkit.json``) beside its weights file."""
    return read_sidecar(spec, path)
