"""Random-weight CLIP checkpoints in the official (OpenAI) layout, built in code from shapes alone.

The architectures and the state-dict builder live in the conformance kit
(``clipkit.testing.checkpoints``, which never imports ``clipkit.nn``, so a
layout bug there cannot hide behind a builder that shares it); this module adds
the test suite's file writers, model inputs and the open_clip oracle.

Stable API (other test helpers import it):

- ``CLIPConfig``: one architecture; ``.family``, ``.text_heads``, ``.vision_heads``, ``.spec()``.
- ``OFFICIAL_CONFIGS``: the nine released architectures by official name.
- ``TINY_VIT``, ``TINY_RESNET``, ``TINY_CONFIGS``: small architectures for fast tests.
- ``make_state_dict(config, *, seed=0, dtype=torch.float16, device="cpu", with_jit_metadata=False)``
- ``save_state_dict(state_dict, path, *, format="zip", wrapper=None, prefix="")``
- ``write_checkpoint(path, config, *, format="zip", **make_state_dict_kwargs)``
- ``sample_images(config, batch=2, *, seed=0)``, ``sample_tokens(config, batch=2, *, seed=0)``
- ``reference_model(state_dict, *, quick_gelu=True)``: open_clip's build of the same weights (fp32, eval).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from clipkit.archive import METADATA_KEYS
from clipkit.testing.checkpoints import (
    OFFICIAL_CONFIGS,
    TINY_CONFIGS,
    TINY_RESNET,
    TINY_VIT,
    CLIPConfig,
    make_state_dict,
)

__all__ = [
    "CLIPConfig",
    "OFFICIAL_CONFIGS",
    "TINY_CONFIGS",
    "TINY_RESNET",
    "TINY_VIT",
    "make_state_dict",
    "reference_model",
    "sample_images",
    "sample_tokens",
    "save_state_dict",
    "write_checkpoint",
]


# -- files -------------------------------------------------------------------------------------


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    format: Literal["zip", "legacy", "safetensors"] = "zip",
    wrapper: str | None = None,
    prefix: str = "",
) -> Path:
    """Write ``state_dict`` to ``path`` and return the path.

    ``format``: ``"zip"`` (``torch.save``'s default), ``"legacy"`` (the pre-1.6
    pickle format) or ``"safetensors"``. ``prefix`` is prepended to every key
    (``"module."`` mimics DDP checkpoints); ``wrapper`` nests the dict under that
    key (``"state_dict"`` or ``"model"``, as training checkpoints do; not for
    safetensors).
    """
    path = Path(path)
    tensors = {prefix + key: value for key, value in state_dict.items()}
    if format == "safetensors":
        if wrapper is not None:
            raise ValueError("safetensors files hold a flat dict of tensors; wrapper is not supported")
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return path
    payload: dict[str, Any] = {wrapper: tensors, "epoch": 1} if wrapper else tensors
    if format == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif format == "zip":
        torch.save(payload, path)
    else:
        raise ValueError(f"unknown format {format!r}; use 'zip', 'legacy' or 'safetensors'")
    return path


def write_checkpoint(
    path: str | Path,
    config: CLIPConfig,
    *,
    format: Literal["zip", "legacy", "safetensors"] = "zip",
    wrapper: str | None = None,
    prefix: str = "",
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Make a state dict for ``config`` (``kwargs`` go to ``make_state_dict``), save it to ``path``, and return it."""
    state_dict = make_state_dict(config, **kwargs)
    save_state_dict(state_dict, path, format=format, wrapper=wrapper, prefix=prefix)
    return state_dict


# -- inputs and the reference -------------------------------------------------------------------


def sample_images(config: CLIPConfig, batch: int = 2, *, seed: int = 0) -> torch.Tensor:
    """A ``[batch, 3, R, R]`` float32 batch of normalised-looking random images for ``config``."""
    gen = torch.Generator().manual_seed(seed)
    r = config.image_resolution
    return torch.randn((batch, 3, r, r), generator=gen)


def sample_tokens(config: CLIPConfig, batch: int = 2, *, seed: int = 0) -> torch.Tensor:
    """A ``[batch, context_length]`` int64 batch shaped like real tokenizer output.

    Each row is start-of-text (``vocab_size - 2``), random ordinary ids, then
    end-of-text (``vocab_size - 1``, the row's highest id) at a random position,
    then zero padding; rows end at different positions.
    """
    gen = torch.Generator().manual_seed(seed)
    ctx, vocab = config.context_length, config.vocab_size
    tokens = torch.zeros((batch, ctx), dtype=torch.long)
    for row in range(batch):
        end = int(torch.randint(2, ctx, (1,), generator=gen))
        tokens[row, 0] = vocab - 2
        tokens[row, 1:end] = torch.randint(1, vocab - 2, (end - 1,), generator=gen)
        tokens[row, end] = vocab - 1
    return tokens


def reference_model(state_dict: Mapping[str, torch.Tensor], *, quick_gelu: bool = True) -> torch.nn.Module:
    """open_clip's model for ``state_dict`` in float32 and eval mode, holding exactly its values: the numerical oracle.

    open_clip's builder rounds the weights into fp16 parameters (as OpenAI's
    does); the float32 model is then reloaded from ``state_dict`` so that an
    fp32 or bf16 checkpoint is compared at its own precision. ``state_dict``
    itself is not modified. ``forward`` returns ``(image_features,
    text_features, logit_scale)`` with normalised features;
    ``encode_image``/``encode_text`` are unnormalised.
    """
    from open_clip.model import build_model_from_openai_state_dict

    model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=quick_gelu, cast_dtype=None).float()
    weights = {key: value for key, value in state_dict.items() if key not in METADATA_KEYS}
    model.load_state_dict(weights, strict=True)
    return model.eval()
