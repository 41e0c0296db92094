"""The conformance kit's machinery: the plugin on its own pluggy manager, per-class caching, foreign samples."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import pluggy
import pytest
import torch

from clipkit import hookspecs
from clipkit.spec import ArchSpec
from clipkit.testing.checkpoints import openai_resnet_state_dict, openai_vit_state_dict


#: The built-in families' sample makers and the built-in plugin that owns each.
BUILTIN_SAMPLES: dict[str, tuple[Callable[..., dict[str, torch.Tensor]], str]] = {
    "OpenAI-layout ViT": (openai_vit_state_dict, "clipkit.builtin.vit"),
    "OpenAI-layout ResNet": (openai_resnet_state_dict, "clipkit.builtin.resnet"),
}


def unrelated_state_dicts(sample: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts no CLIP plugin should claim: a lone linear layer, a classifier, and the sample under a foreign prefix."""
    gen = torch.Generator().manual_seed(0)
    return {
        "a single linear layer": {"weight": torch.randn(4, 4, generator=gen), "bias": torch.zeros(4)},
        "an image classifier": {
            "conv1.weight": torch.randn(8, 3, 7, 7, generator=gen),
            "bn1.weight": torch.ones(8),
            "fc.weight": torch.randn(10, 8, generator=gen),
            "fc.bias": torch.zeros(10),
        },
        "the sample with every key under 'not_this_plugin.'": {
            f"not_this_plugin.{key}": value for key, value in sample.items()
        },
    }


class OwnHooks:
    """The plugin under test on its own pluggy manager, so its hooks are called directly and their errors surface."""

    def __init__(self, plugin: object) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(plugin, name="plugin-under-test")

    def implements(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def call(self, hook: str, **kwargs: Any) -> Any:
        """The plugin's answer to ``hook`` (``None`` when it does not implement it)."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            return impl.function(*(kwargs[name] for name in impl.argnames))
        return None


_CACHE = pytest.StashKey[dict[str, Any]]()


def per_class(request: pytest.FixtureRequest, key: str, make: Callable[[], Any]) -> Any:
    """``make()`` once per test class (cached on the class's collection node, dropped when the class finishes)."""
    node = request.node.getparent(pytest.Class) or request.node
    cache = node.stash.setdefault(_CACHE, {})
    if key not in cache:
        if not cache:
            node.addfinalizer(cache.clear)
        cache[key] = make()
    return cache[key]


def build_for_loading(hooks: OwnHooks, spec: ArchSpec) -> Any:
    """The plugin's model as ``clipkit.load`` builds it: on meta, or for real on the CPU when it holds tensors no
    checkpoint can fill (non-persistent buffers computed at construction)."""
    from clipkit.loader import meta_tensors_outside_state_dict

    with torch.device("meta"):
        model = hooks.call("build_model", spec=spec)
    if isinstance(model, torch.nn.Module) and meta_tensors_outside_state_dict(model):
        with torch.device("cpu"):
            model = hooks.call("build_model", spec=spec)
    return model


def describe(plugin: object) -> str:
    return getattr(plugin, "__name__", type(plugin).__name__)


def registered_names(registry: Any) -> list[str]:
    return [name for name, _ in registry.pm.list_name_plugin()]


def owned_families(plugin: object) -> set[str]:
    """The built-in families a plugin owns: ``{"vit"}`` for clipkit.builtin.vit, ``{"resnet"}`` for .resnet, else none."""
    return {
        family
        for family, owner in (("vit", "clipkit.builtin.vit"), ("resnet", "clipkit.builtin.resnet"))
        if plugin is sys.modules.get(owner)
    }
