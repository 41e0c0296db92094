"""Comparing a plugin's model with a reference implementation, and registering a plugin for a test.

A plugin's own tests check its numbers against a reference built on the same
random weights (transformers, open_clip): ``dual_encoder_outputs`` gives the
four numbers a clipkit model has to get right, ``assert_outputs_close`` and
``max_difference`` compare them with the reference's, and
``plugin_registered`` makes clipkit's dispatch see the plugin for the length
of a test (through its entry point when installed, else registered at run
time and removed afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["assert_outputs_close", "dual_encoder_outputs", "max_difference", "plugin_registered"]


def dual_encoder_outputs(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"image", "text", "logits_per_image", "logits_per_text"}`` of a clipkit model, without gradients."""
    with torch.no_grad():
        per_image, per_text = model(images, tokens)
        return {
            "image": model.encode_image(images),
            "text": model.encode_text(tokens),
            "logits_per_image": per_image,
            "logits_per_text": per_text,
        }


def assert_outputs_close(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor], tol: float = 1e-5) -> None:
    """Every output in ``want`` equal to ``got``'s to ``tol`` (absolute and relative), the failing key named."""
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=tol, atol=tol, msg=lambda m, k=key: f"{k}: {m}")


def max_difference(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> float:
    """The largest absolute difference over the outputs in ``want``."""
    return max(float((got[key].float() - want[key].float()).abs().max()) for key in want)


@contextmanager
def plugin_registered(plugin: Any, name: str) -> Iterator[Any]:
    """The process-wide registry with ``plugin`` in it: as installed (entry point), else registered until the block ends."""
    from clipkit.plugins import get_registry

    registry = get_registry()
    if registry.pm.is_registered(plugin):
        yield registry
        return
    registered = registry.register(plugin, name=name)
    try:
        yield registry
    finally:
        registry.unregister(registered)
