"""Which files of a multi-format checkpoint directory (or Hub repo) make up the one checkpoint clipkit loads.

A repo on the Hugging Face Hub often holds the same weights in several
layouts: laion's hold open_clip's files and transformers' files, timm's
``*.openai`` copies hold open_clip's files beside timm's own vision-only
``model.safetensors``. One rule, used both to choose what to download and what
to read from a directory, makes the choice deterministic:

1. open_clip's layout: ``open_clip_config.json`` with ``open_clip_model.safetensors``,
   else ``open_clip_pytorch_model.bin``;
2. transformers' layout: ``config.json`` (and, when present,
   ``preprocessor_config.json`` and the ``TRANSFORMERS_SIDE_FILES``: processor
   and SentencePiece tokenizer files) with ``model.safetensors``, else
   ``pytorch_model.bin``;
3. otherwise the only weights file at the top.

The first layout whose config and a weights file are both present wins;
``Choice.why`` says which and what was passed over, for ``clipkit inspect``.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from clipkit.errors import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

#: transformers' processor and SentencePiece tokenizer files, fetched with the weights when the repo has them
#: (a model's ``clipkit.get_tokenizer`` reads them; a large ``tokenizer.json`` is left out)
TRANSFORMERS_SIDE_FILES = ("processor_config.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")

#: (layout name, its config files (the first one names the layout), its weights files, most preferred first)
LAYOUTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("open_clip", ("open_clip_config.json",), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
    ("transformers", ("config.json", "preprocessor_config.json", *TRANSFORMERS_SIDE_FILES),
     ("model.safetensors", "pytorch_model.bin")),
)


@attrs.frozen
class Choice:
    """The files of the chosen checkpoint (configs first, the weights file last), its layout and why it was chosen."""

    layout: str
    files: tuple[str, ...]
    why: str

    @property
    def weights(self) -> str:
        """The weights file (the last of ``files``)."""
        return self.files[-1]


def choose_checkpoint(names: Iterable[str]) -> Choice | None:
    """The one checkpoint among file ``names`` (relative, ``/``-separated) by the rule above, or ``None`` if none fits."""
    present = set(names)
    passed_over: list[str] = []
    for layout, configs, weights in LAYOUTS:
        found = [w for w in weights if w in present]
        if configs[0] in present and found:
            files = tuple(c for c in configs if c in present) + (found[0],)
            notes = [f"{configs[0]} is present"]
            if len(found) > 1:
                notes.append(f"{found[0]} preferred over {', '.join(found[1:])}")
            others = sorted(n for n in present - set(files) if n.endswith(WEIGHT_SUFFIXES))
            if others:
                notes.append(f"not read: {', '.join(others)}")
            return Choice(layout, files, f"{layout} layout ({'; '.join(notes + passed_over)})")
        if configs[0] in present or found:
            passed_over.append(f"no complete {layout} layout")
    top = sorted(n for n in present if "/" not in n and n.endswith(WEIGHT_SUFFIXES))
    if len(top) == 1:
        return Choice("single file", (top[0],), "the only weights file")
    return None


def require_checkpoint(names: Iterable[str], where: str) -> Choice:
    """``choose_checkpoint``, or ``CheckpointError`` naming ``where`` and listing the files when none fits."""
    names = sorted(names)
    choice = choose_checkpoint(names)
    if choice is None:
        listing = ", ".join(names) or "no files"
        raise CheckpointError(
            f"cannot tell which checkpoint to load in {where} (files: {listing}); name the weights file itself"
        )
    return choice


__all__ = ["Choice", "LAYOUTS", "WEIGHT_SUFFIXES", "choose_checkpoint", "require_checkpoint"]
