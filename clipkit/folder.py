"""What a checkpoint folder may hold: files it names resolve inside it, and a named file is a regular file.

A checkpoint folder comes from a stranger. A link in it may point anywhere, so
every file a layout or a shard index names must resolve (``os.path.realpath``)
inside the folder's own real path. The one exception is Hugging Face's cache:
a snapshot folder (``.../models--org--repo/snapshots/<rev>/``) links each of
its files into its own repo's ``blobs/`` folder, as ``huggingface_hub`` lays it
out. A config or weights file that exists but is not a regular file (a FIFO, a
device, a folder, a dangling link) is refused too, never taken as absent.
Every refusal is a ``CheckpointError`` naming the file (and the link's target).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from clipkit.errors import CheckpointError

#: names of files a layout or loader may read from a folder: configs and weights
_READ_SUFFIXES = (".json", ".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _allowed_roots(directory: str) -> list[str]:
    """The folder's real path, plus its repo's ``blobs/`` when it lies in a Hugging Face cache snapshot."""
    roots = [directory]
    here = Path(directory)
    for folder in (here, *here.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            roots.append(str(folder.parent.parent / "blobs"))
            break
    return roots


def contained(directory: str | os.PathLike[str], path: str | os.PathLike[str], *, what: str = "") -> Path:
    """``path`` if it resolves inside ``directory`` (or its Hugging Face cache blobs); else ``CheckpointError``.

    ``what`` says which file named ``path`` (an index, a layout). Links are
    followed to their end before the check, so a link (or a linked folder on
    the way) leading out of the checkpoint's folder is refused, naming the
    link and where it leads.
    """
    real_dir = os.path.realpath(directory)
    target = os.path.realpath(path)
    for root in _allowed_roots(real_dir):
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            return Path(path)
    named = f" (named by {what})" if what else ""
    raise CheckpointError(
        f"{path}{named} leads to {target}, outside the checkpoint's folder {real_dir}; only files inside it "
        "are read. Copy the file into the folder instead of linking to it."
    )


def side_file(path: str | os.PathLike[str]) -> bool:
    """Whether the config or weights file ``path`` is there: ``False`` if nothing has that name, ``True`` if a regular file.

    Something else under the name (a FIFO, a device, a folder, a dangling
    link) is a ``CheckpointError``: a config that cannot be read is never
    taken as absent (the load would go on with guesses).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror}); remove it or make it a regular file") from exc
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or special file"
        raise CheckpointError(f"{path} is {kind}, not a readable file; remove it or make it a regular file")
    return True


def listed_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The regular files directly in ``directory``, sorted; a config or weights name that is not one is refused.

    Every ``.json`` or weights-suffixed entry goes through ``side_file`` (a
    FIFO named ``config.json`` is an error, not a missing config); the rest
    that are not regular files (sub-folders) are left out.
    """
    files = []
    for entry in sorted(Path(directory).iterdir()):
        if entry.name.endswith(_READ_SUFFIXES):
            if side_file(entry):
                files.append(entry)
        elif entry.is_file():
            files.append(entry)
    return files


def names_in(directory: str | os.PathLike[str]) -> Iterable[str]:
    """The names of ``listed_files(directory)``, for ``clipkit.layouts.choose_checkpoint``."""
    return [p.name for p in listed_files(directory)]
