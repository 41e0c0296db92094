"""Building modules on the meta device without initialising them.

A meta tensor has a shape and a dtype but no values, so an initialiser
(``nn.init.normal_``, ``Tensor.uniform_``, ``Linear.reset_parameters``) has
nothing to do on one. torch dispatches it all the same, and some initialisers
(``normal_`` among them) run through Python reference implementations that
import ``torch._dynamo`` on first use: over a second of a fresh process's time
spent initialising values that do not exist. ``skip_init_on_meta`` makes those
calls no-ops for meta tensors only; every other call, and every call on a real
tensor, runs unchanged, so a model built under it is the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["skip_init_on_meta"]

#: ``torch.nn.init``'s public initialisers (some dispatch to a mode themselves, the rest through the methods below)
_INIT_FUNCTIONS = frozenset(
    getattr(torch.nn.init, name)
    for name in dir(torch.nn.init)
    if name.endswith("_") and not name.startswith("_") and callable(getattr(torch.nn.init, name))
)

#: in-place tensor methods that only write values: samplers, fills and the steps of ``trunc_normal_``
_VALUE_WRITERS = frozenset(
    getattr(torch.Tensor, name)
    for name in (
        "normal_", "uniform_", "fill_", "zero_", "random_", "exponential_", "geometric_", "log_normal_",
        "cauchy_", "bernoulli_", "erfinv_",
    )
)

_SKIPPED = _INIT_FUNCTIONS | _VALUE_WRITERS


def _target(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The tensor an initialiser writes: its first argument, or ``tensor=``/``self=`` when passed by name."""
    if args:
        return args[0]
    return kwargs.get("tensor", kwargs.get("self"))


class _SkipInitOnMeta(TorchFunctionMode):
    """A torch-function mode that returns an initialiser's meta-tensor target untouched instead of running it."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _SKIPPED:
            target = _target(args, kwargs)
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def skip_init_on_meta() -> TorchFunctionMode:
    """A context manager under which initialising a meta tensor does nothing (all else runs as usual).

    Use it around building a model on the meta device that a state dict will
    fill: ``with torch.device("meta"), skip_init_on_meta(): model = build()``.
    It covers ``torch.nn.init``'s functions, the modules' ``reset_parameters``
    (which call them) and in-place samplers and fills such as
    ``Tensor.normal_`` or ``Tensor.fill_``. Like ``torch.device(...)`` as a
    context, it applies to the current thread only.
    """
    return _SkipInitOnMeta()
