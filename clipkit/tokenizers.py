"""Which tokenizer a model needs: ``get_tokenizer(model_or_source)`` through the ``make_tokenizer`` hook.

A model ``clipkit.load`` returns remembers the spec it was built from
(``model.clipkit_spec``); a source is inspected (its shapes and side files read,
no model built). Either way the spec goes to the ``make_tokenizer`` plugins,
the built-in OpenAI BPE last.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from clipkit.errors import ConfigurationError
from clipkit.plugins import PluginRegistry, get_registry
from clipkit.spec import ArchSpec

#: the attribute ``clipkit.load`` sets on every model it returns: the ``ArchSpec`` it was built from
SPEC_ATTRIBUTE = "clipkit_spec"


def make_tokenizer(spec: ArchSpec, *, registry: PluginRegistry | None = None) -> Callable[..., torch.Tensor]:
    """The tokenizer for ``spec`` from the first ``make_tokenizer`` plugin that answers."""
    registry = registry or get_registry()
    tokenizer = registry.call_first("make_tokenizer", returns=(Callable, "a callable"), spec=spec)
    if tokenizer is None:  # only possible when the built-in default was unregistered
        raise ConfigurationError(f"no plugin makes a tokenizer for family {spec.family!r}")
    return tokenizer


def spec_of(model: torch.nn.Module) -> ArchSpec:
    """The ``ArchSpec`` a model was loaded from (``model.clipkit_spec``); ``ConfigurationError`` if it has none."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if not isinstance(spec, ArchSpec):
        raise ConfigurationError(
            f"this {type(model).__name__} was not returned by clipkit.load (it has no {SPEC_ATTRIBUTE}), so its "
            "tokenizer is unknown; pass the checkpoint's source to clipkit.get_tokenizer instead"
        )
    return spec


def get_tokenizer(
    model_or_source: torch.nn.Module | str | os.PathLike[str],
    *,
    download_root: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Callable[..., torch.Tensor]:
    """The right tokenizer for a loaded model or for a checkpoint source (read, not built): ``tok(texts) -> LongTensor``.

    ``model_or_source`` is a model ``clipkit.load`` returned, or anything
    ``clipkit.load`` accepts (name, path, URL; the keywords are as there). The
    tokenizer is the one the checkpoint's family plugin provides, else OpenAI's
    BPE (``clipkit.tokenize``'s): ``tokenizer(texts, context_length=None)`` gives
    ``[len(texts), context_length]`` int64 ids for ``model.encode_text``, with the
    model's own context length by default.
    """
    if isinstance(model_or_source, torch.nn.Module):
        spec = spec_of(model_or_source)
    else:
        from clipkit.loader import inspect

        spec = inspect(model_or_source, download_root=download_root, sha256=sha256, storage_options=storage_options)
    return make_tokenizer(spec)
