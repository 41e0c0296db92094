"""clipkit's spec sidecar: settles the fields a checkpoint's shapes cannot show from ``<weights>.clipkit.json``.

``clipkit export --format safetensors`` (``clipkit.export.to_safetensors``)
writes ``NAME.safetensors`` and ``NAME.clipkit.json``; the sidecar's
``fields`` are the spec values detection would otherwise assume. This plugin
reads them back for any family, recorded as coming from a config file, so the
reload warns about nothing. ``clipkit.export.to_torchscript`` puts the same
document inside the archive (``<archive>/extra/clipkit.json``, torch's
``_extra_files``); it is read from there as data, within clipkit's JSON
limits (before any ``NAME.clipkit.json`` beside the archive), so a plain
(``jit=False``) reload settles the same fields. A sidecar for another family,
or with a field the spec does not have, is a ``ConfigurationError``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from clipkit.archive import is_torchscript_archive
from clipkit.errors import CheckpointError, ConfigurationError
from clipkit.folder import side_file
from clipkit.hookspecs import hookimpl
from clipkit.limits import MAX_JSON_BYTES, parse_json, read_json
from clipkit.torchfile import zip_prefix
from clipkit.zipstore import open_zip, read_entry
from clipkit.spec import ArchSpec, Provenance

__all__ = ["ARCHIVE_ENTRY", "SIDECAR_FORMAT", "SIDECAR_SUFFIX", "configure_spec", "read_sidecar", "sidecar_path"]

SIDECAR_FORMAT = "clipkit-spec-sidecar/1"
SIDECAR_SUFFIX = ".clipkit.json"
#: the sidecar's name among a TorchScript archive's extra files (``<prefix>/extra/clipkit.json`` in the zip)
ARCHIVE_ENTRY = "clipkit.json"


def sidecar_path(weights: Path) -> Path:
    """Where the sidecar of the weights file ``weights`` lives: the same name with the suffix ``.clipkit.json``."""
    return weights.with_suffix(SIDECAR_SUFFIX)


def _value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _archive_sidecar(path: Path) -> tuple[Any, str] | None:
    """The sidecar document inside the TorchScript archive ``path`` and its label, or ``None`` if it has none."""
    try:
        if not is_torchscript_archive(path):
            return None
    except zipfile.BadZipFile:  # a damaged zip: the checkpoint reader says so
        return None
    with open_zip(path) as zf:
        entry = f"{zip_prefix(zf, path)}/extra/{ARCHIVE_ENTRY}"
        if entry not in zf.namelist():
            return None
        label = f"{path}!{entry}"
        return parse_json(read_entry(zf, entry, path, limit=MAX_JSON_BYTES), what=f"clipkit sidecar {label}"), label


def read_sidecar(spec: ArchSpec, path: Path | None) -> ArchSpec | None:
    """``spec`` with the fields of the sidecar of the weights file ``path``, or ``None`` when there is none.

    The sidecar is a TorchScript archive's own ``extra/clipkit.json`` entry
    (inseparable from its weights) or else ``NAME.clipkit.json`` beside the file.
    """
    if path is None or not Path(path).is_file():
        return None
    beside = sidecar_path(Path(path))
    if (found := _archive_sidecar(Path(path))) is not None:
        data, file = found
    elif side_file(beside):  # a FIFO, folder or device under the name is an error, not "no sidecar"
        data, file = read_json(beside, what=f"clipkit sidecar {beside}"), str(beside)
    else:
        return None
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
    try:  # every field is checked strictly by the spec's own validators ("false" is not a bool)
        return spec.with_values(values, {name: Provenance.config(file, f"fields.{name}") for name in values})
    except ConfigurationError as exc:
        raise ConfigurationError(f"{file}: {exc}; delete the sidecar or export the model again") from exc


@hookimpl
def configure_spec(spec: ArchSpec, path: Path | None) -> ArchSpec | None:
    """Settle any family's spec from the clipkit sidecar: inside its TorchScript archive, or ``NAME.clipkit.json`` beside its weights."""
    return read_sidecar(spec, path)
