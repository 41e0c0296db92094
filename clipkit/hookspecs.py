"""Every hook a clipkit plugin may implement, with its contract.

Plugins implement hooks with ``@clipkit.hookimpl`` on plain module-level
functions (or methods of an object they register). pluggy passes arguments by
name, so an implementation may accept any subset of a hook's arguments, but the
names must be exactly these.

The pipeline calls them in this order::

    register_models()                      -> names for clipkit.load("ViT-B/32")
    fetch_checkpoint(source, cache_dir, sha256, storage_options)   -> local path
    forget_checkpoint(source, path, sha256)  -> only when the fetched file is not a checkpoint
    detect_architecture(state_dict, path)  -> ArchSpec (exactly one claimant)
    configure_spec(spec, path)             -> the spec settled from a config file beside the weights (at most one)
    adapt_state_dict(state_dict, spec, target)  -> only for image_resolution= / context_length=
    build_model(spec)                      -> nn.Module on the meta device
    select_tower(model, spec, tower)       -> only for tower="image" / "text"
    make_transform(spec)                   -> PIL image -> tensor
    make_tokenizer(spec)                   -> texts -> LongTensor (when a tokenizer is asked for)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import torch

    from clipkit.spec import ArchSpec, ModelSource

PROJECT = "clipkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models() -> Mapping[str, ModelSource] | None:
    """Name the checkpoints this plugin knows, as ``{name: ModelSource}``.

    Called when names are first needed (``clipkit.available_models()`` or
    ``clipkit.load`` with a string source); the merged answer is kept until a
    plugin is registered or removed. Every plugin's answer is merged, built-ins
    first; a name offered by two plugins is listed once with a warning, and
    loading that name raises ``PluginError`` naming both. Return ``None`` or an
    empty mapping to register nothing.
    """


@hookspec(firstresult=True)
def fetch_checkpoint(
    source: str, cache_dir: Path, sha256: str | None, storage_options: Mapping[str, Any]
) -> str | Path | None:
    """Make ``source`` available as a local file and return its path.

    Called for every source that is not an existing local path: URLs
    (``https://``, ``s3://``, ``file://``, any fsspec protocol) and Hub sources
    (``hf-hub:<org>/<repo>``, answered with a directory). ``cache_dir``
    is where downloads belong; ``sha256`` is the expected lower-case hex digest
    or ``None`` when the caller gave none (the fetcher may still find one in the
    URL). ``storage_options`` are the caller's fsspec options (credentials,
    endpoint) to pass to the filesystem. Verify the digest before returning,
    raising ``clipkit.errors.ChecksumError`` on a mismatch. When
    ``clipkit.fetching.is_offline()`` is true (``CLIPKIT_OFFLINE=1``, and while
    clipkit asks every source of a registered name for a cached copy before
    downloading any), never touch the network: return a cached copy or raise
    ``clipkit.errors.OfflineError``.
    Return ``None`` for "not my scheme": the next plugin is asked. The first
    non-``None`` answer wins.
    """


@hookspec(firstresult=True)
def forget_checkpoint(source: str, path: Path, sha256: str | None) -> bool | None:
    """Drop ``path``, the file a ``fetch_checkpoint`` returned for ``source``, from the cache: it is not a checkpoint.

    Called by ``clipkit.load`` and ``clipkit.inspect`` when the fetched file
    cannot be read as a checkpoint (an error page served with status 200, say).
    ``sha256`` is the caller's digest or ``None``. The fetcher that cached
    ``path`` removes it, so the next load downloads afresh, and returns
    ``True``; it keeps bytes a digest vouched for (the publisher's own: a new
    download would not help) and returns ``None``. Return ``None`` for "not my
    file". The built-in fetchers do this through ``clipkit.fetching.forget``.
    The first non-``None`` answer wins.
    """


@hookspec
def detect_architecture(state_dict: Mapping[str, torch.Tensor], path: Path | None) -> ArchSpec | None:
    """Recognise a state dict as this plugin's architecture and describe it.

    Called once per checkpoint with its tensors (possibly on the meta device or
    memory-mapped: read ``.shape`` and keys, not values, unless you must) and
    the local ``path`` it was read from (a file or a directory, ``None`` when the
    state dict did not come from disk), so a plugin may read side files such as
    a ``config.json``. Return an ``ArchSpec`` (a frozen attrs subclass) with
    every hyperparameter inferred from shapes, or ``None`` for "not mine".
    Every plugin is asked: exactly one may claim. None claiming raises
    ``NoClaimantError``; two claiming raises ``AmbiguousArchitectureError``
    naming both. Claim only by your own key/shape signature.
    """


@hookspec
def configure_spec(spec: ArchSpec, path: Path | None) -> ArchSpec | None:
    """Settle a detected spec's fields from a config file beside the weights that this plugin reads.

    Called once per load and per ``clipkit.inspect``, right after
    ``detect_architecture``, with the claimant's spec and the same ``path``.
    Return ``None`` when no config of yours describes these weights, else the
    spec with the values your config settles, each recorded with its file and
    key: ``spec.with_values(values, {name: Provenance.config(file, key)})``.
    Check the values the shapes also show (a mismatch is a
    ``ConfigurationError``: the config does not describe the weights) and raise
    ``clipkit.errors.UnsupportedConfigError`` naming the field when the config
    asks for something no plugin can build; never return a partial or
    approximate spec. Precedence: the caller's keywords still win over your
    values; your values win over the official release table and conventions.
    Every plugin is asked; at most one may answer (two raise
    ``AmbiguousArchitectureError`` naming both). This is how a plugin supplies
    the conventions of its own format for specs another plugin detected.
    """


@hookspec(firstresult=True)
def build_model(spec: ArchSpec) -> torch.nn.Module | None:
    """Build the model ``spec`` describes, or return ``None`` for "not my family".

    Called inside ``torch.device("meta")``: construct the module (no weights
    are initialised or allocated); the core then loads the checkpoint into it
    with ``load_state_dict(strict=True, assign=True)``. If the module holds
    tensors that no checkpoint fills (a non-persistent buffer computed at
    construction), the core calls the hook once more on the CPU and loads into
    that model instead: correct, but it pays for a real initialisation. The module must
    provide ``encode_image(images)``, ``encode_text(tokens)`` and
    ``forward(images, tokens) -> (logits_per_image, logits_per_text)``. Its
    ``state_dict`` keys must match the checkpoint's (remap in a
    ``load_state_dict`` pre-hook if the file's layout differs). When the model
    is cast to half precision, normalisation layers, modules whose class sets
    ``keep_fp32 = True`` and parameters a module names in ``fp32_parameters``
    stay float32. The first non-``None`` answer wins.
    """


@hookspec(firstresult=True)
def make_transform(spec: ArchSpec) -> Callable[[Any], torch.Tensor] | None:
    """Return the image preprocessing for ``spec``: a callable from a PIL image to a CHW float tensor.

    Called once per load. Return ``None`` to leave it to the next plugin. The
    built-in default (resize bicubic, center crop to ``spec.image_resolution``,
    RGB, to tensor, normalise with CLIP's mean/std) is ``trylast``, so any
    plugin's answer comes first. The first non-``None`` answer wins.
    """


@hookspec(firstresult=True)
def make_tokenizer(spec: ArchSpec) -> Callable[..., torch.Tensor] | None:
    """Return the tokenizer for ``spec``: ``tokenizer(texts, context_length=None) -> torch.LongTensor``.

    Called by ``clipkit.get_tokenizer(model_or_source)`` (not during
    ``clipkit.load``), with the spec the model was loaded from or the spec
    ``clipkit.inspect`` reads off a source. The callable takes one string or a
    sequence of strings and returns a ``[len(texts), context_length]`` int64
    tensor ready for ``model.encode_text``: every id below the model's
    ``vocab_size``, padded and ended by the family's own rules.
    ``context_length=None`` means the model's own context length (the width of
    its positional embedding); a text too long for the context is truncated by
    the family's rule (the row still ends as the model expects). Give the
    callable ``context_length`` and ``vocab_size`` attributes. Raise a
    ``clipkit.errors`` class when the spec's tokenizer cannot be served (a
    missing vocabulary file, an unsupported tokenizer), naming what is missing.
    Return ``None`` for "not my family". The built-in OpenAI BPE tokenizer
    (``clipkit.tokenize``'s, truncating) is ``trylast``, so any plugin's answer
    comes first. The first non-``None`` answer wins.
    """


@hookspec(firstresult=True)
def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: ArchSpec, target: ArchSpec
) -> Mapping[str, torch.Tensor] | None:
    """Make ``state_dict`` (which fits ``spec``) fit ``target``: the same spec at another input size or text length.

    Called once per load, and only when the caller asked for an
    ``image_resolution`` or ``context_length`` other than the checkpoint's;
    ``target`` is ``spec`` with those fields replaced (``image_resolution`` may
    be a ``(height, width)`` pair). Return a new mapping: ``state_dict``'s
    entries with the size-dependent tensors (positional embeddings) resized
    and every other entry passed through untouched (reading the rest would
    defeat memory-mapped loading). ``clipkit.nn`` has the shared pieces:
    ``resize_grid_embedding`` (bicubic, antialiased, leading tokens kept, as
    open_clip's ``resize_pos_embed``) and ``resize_text_embedding``. Raise
    ``clipkit.errors.ResizeError`` for a size the family cannot run at (not a
    multiple of the patch size, say). Return ``None`` for "not my family"; if
    no plugin answers, the load fails with ``ResizeError``. The first
    non-``None`` answer wins.
    """


@hookspec(firstresult=True)
def select_tower(model: torch.nn.Module, spec: ArchSpec, tower: str) -> torch.nn.Module | None:
    """Cut one tower (``"image"`` or ``"text"``) out of ``model``, built for ``spec`` on the meta device.

    Called once per ``clipkit.load(..., tower=...)``, before any weight is
    loaded. Return a module holding only that tower's submodules (shared with
    ``model``, so nothing is allocated) with ``encode_image`` or
    ``encode_text``, ``logit_scale`` and the tower's projection; its
    ``state_dict`` keys must be the full model's keys for that tower, so the
    core loads exactly those entries and never reads the other tower's. The
    built-in answer (``trylast``) cuts any ``clipkit.nn.CLIP``. Return ``None``
    for "not my model"; if no plugin answers, the load fails with
    ``clipkit.errors.TowerError``. The first non-``None`` answer wins.
    """
