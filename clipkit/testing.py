"""The conformance kit: check from your own pytest suite that a clipkit plugin keeps the hook contracts.

A plugin author subclasses ``PluginConformance`` in one of their test modules,
points it at the plugin (the module or object holding the ``@clipkit.hookimpl``
functions) and gives it a sample state dict in the plugin's own layout; pytest
then collects and runs every inherited ``test_*`` method::

    # tests/test_conformance.py of the plugin's distribution
    import clipkit_myvariant
    from clipkit.testing import PluginConformance

    class TestMyVariant(PluginConformance):
        plugin = clipkit_myvariant

        def sample_state_dict(self):
            return clipkit_myvariant.MyCLIP(clipkit_myvariant.EXAMPLE_SPEC).state_dict()

The class name must start with ``Test`` for pytest to collect it. Optional
class attributes and methods to override:

- ``expected_spec``: the exact ``ArchSpec`` detection must return for the sample;
- ``sample_checkpoint(directory)``: write the sample in its real on-disk form
  (a file or a directory, e.g. with a ``config.json``) and return its path; by
  default the sample state dict is saved with ``torch.save``;
- ``plugin_name``: the name used when the kit registers the plugin at run time.

What the checks cover, one test each: the hooks match clipkit's hook specs;
``detect_architecture`` claims the sample, deterministically, and answers
``None`` for OpenAI-layout ViT and ResNet checkpoints (unless the plugin is the
built-in that owns them) and for unrelated state dicts; the built-ins do not
claim the sample; clipkit's real dispatch finds exactly one claimant; the spec
is a frozen, hashable attrs ``ArchSpec`` subclass whose ``repr`` evaluates back
to an equal spec; ``build_model`` declines other families and builds on the meta
device without allocating; the sample loads strictly by assignment through
``clipkit.loader.load_weights``; the model exposes ``visual.input_resolution``,
``context_length`` and ``vocab_size``; ``encode_image``/``encode_text`` give
``[batch, embed_dim]``; ``forward`` gives ``(logits_per_image,
logits_per_text)``, one the transpose of the other; the transform maps PIL
images to ``[3, R, R]``; and ``clipkit.load`` loads the sample checkpoint.

The kit registers the plugin with the process-wide registry only for the tests
that need clipkit's dispatch (and only when it is not already registered, for
example through its entry point), and checks afterwards that the registry holds
exactly the plugins it held before. This module imports ``pytest``: it is meant
for test suites, not for run-time use.

``openai_vit_state_dict`` and ``openai_resnet_state_dict`` build tiny random
checkpoints in the official OpenAI layout, the kit's stand-ins for "a checkpoint
that is not yours".
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pluggy
import pytest
import torch

from clipkit import hookspecs
from clipkit.builtin.specs import ResNetSpec, ViTSpec
from clipkit.spec import ArchSpec

__all__ = [
    "PluginConformance",
    "openai_resnet_state_dict",
    "openai_vit_state_dict",
    "sample_images",
    "sample_tokens",
]

# -- official-layout samples ---------------------------------------------------------------------

_EMBED = 16
_CONTEXT = 8
_VOCAB = 64
_TEXT_WIDTH = 32


class _Random:
    """Seeded random tensors at CLIP-like scales (LayerNorm weights near one), all float32."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen) * std + mean

    def layer_norm(self, state: dict[str, torch.Tensor], prefix: str, width: int) -> None:
        state[f"{prefix}.weight"] = self.normal(width, std=0.1, mean=1.0)
        state[f"{prefix}.bias"] = self.normal(width, std=0.1)

    def batch_norm(self, state: dict[str, torch.Tensor], prefix: str, channels: int) -> None:
        state[f"{prefix}.weight"] = self.normal(channels, std=0.1, mean=1.0)
        state[f"{prefix}.bias"] = self.normal(channels, std=0.1)
        state[f"{prefix}.running_mean"] = self.normal(channels, std=0.1)
        state[f"{prefix}.running_var"] = torch.rand(channels, generator=self.gen) + 0.5
        state[f"{prefix}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)

    def transformer(self, state: dict[str, torch.Tensor], prefix: str, width: int, layers: int) -> None:
        for i in range(layers):
            block = f"{prefix}.resblocks.{i}"
            state[f"{block}.attn.in_proj_weight"] = self.normal(3 * width, width, std=width**-0.5)
            state[f"{block}.attn.in_proj_bias"] = self.normal(3 * width)
            state[f"{block}.attn.out_proj.weight"] = self.normal(width, width, std=width**-0.5)
            state[f"{block}.attn.out_proj.bias"] = self.normal(width)
            self.layer_norm(state, f"{block}.ln_1", width)
            state[f"{block}.mlp.c_fc.weight"] = self.normal(4 * width, width, std=width**-0.5)
            state[f"{block}.mlp.c_fc.bias"] = self.normal(4 * width)
            state[f"{block}.mlp.c_proj.weight"] = self.normal(width, 4 * width, std=(4 * width) ** -0.5)
            state[f"{block}.mlp.c_proj.bias"] = self.normal(width)
            self.layer_norm(state, f"{block}.ln_2", width)

    def text_tower(self, state: dict[str, torch.Tensor]) -> None:
        state["positional_embedding"] = self.normal(_CONTEXT, _TEXT_WIDTH, std=0.01)
        state["text_projection"] = self.normal(_TEXT_WIDTH, _EMBED, std=_TEXT_WIDTH**-0.5)
        state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
        self.transformer(state, "transformer", _TEXT_WIDTH, 1)
        state["token_embedding.weight"] = self.normal(_VOCAB, _TEXT_WIDTH)
        self.layer_norm(state, "ln_final", _TEXT_WIDTH)


def openai_vit_state_dict(*, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random CLIP ViT in OpenAI's official key layout (16 px images, 8 px patches, one block per tower).

    The built-in ``clipkit.builtin.vit`` plugin claims it; no other plugin
    should. Every tensor is float32; the same ``seed`` gives the same values.
    """
    rnd = _Random(seed)
    width, patch, resolution = 32, 8, 16
    grid = resolution // patch
    state: dict[str, torch.Tensor] = {
        "visual.class_embedding": rnd.normal(width, std=width**-0.5),
        "visual.positional_embedding": rnd.normal(grid * grid + 1, width, std=width**-0.5),
        "visual.proj": rnd.normal(width, _EMBED, std=width**-0.5),
        "visual.conv1.weight": rnd.normal(width, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
    }
    rnd.layer_norm(state, "visual.ln_pre", width)
    rnd.transformer(state, "visual.transformer", width, 1)
    rnd.layer_norm(state, "visual.ln_post", width)
    rnd.text_tower(state)
    return state


def openai_resnet_state_dict(*, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random CLIP ResNet in OpenAI's official key layout (32 px images, width 8, one block per stage).

    The built-in ``clipkit.builtin.resnet`` plugin claims it; no other plugin
    should. Every tensor is float32 (``num_batches_tracked`` int64).
    """
    rnd = _Random(seed)
    width, resolution = 8, 32

    def conv(key: str, out_ch: int, in_ch: int, k: int) -> None:
        state[key] = rnd.normal(out_ch, in_ch, k, k, std=math.sqrt(2.0 / (in_ch * k * k)))

    state: dict[str, torch.Tensor] = {}
    conv("visual.conv1.weight", width // 2, 3, 3)
    rnd.batch_norm(state, "visual.bn1", width // 2)
    conv("visual.conv2.weight", width // 2, width // 2, 3)
    rnd.batch_norm(state, "visual.bn2", width // 2)
    conv("visual.conv3.weight", width, width // 2, 3)
    rnd.batch_norm(state, "visual.bn3", width)
    inplanes = width
    for stage in range(4):
        planes = width * 2**stage
        block = f"visual.layer{stage + 1}.0"
        conv(f"{block}.conv1.weight", planes, inplanes, 1)
        rnd.batch_norm(state, f"{block}.bn1", planes)
        conv(f"{block}.conv2.weight", planes, planes, 3)
        rnd.batch_norm(state, f"{block}.bn2", planes)
        conv(f"{block}.conv3.weight", planes * 4, planes, 1)
        rnd.batch_norm(state, f"{block}.bn3", planes * 4)
        conv(f"{block}.downsample.0.weight", planes * 4, inplanes, 1)  # every first block changes width
        rnd.batch_norm(state, f"{block}.downsample.1", planes * 4)
        inplanes = planes * 4
    pool = width * 32
    side = resolution // 32
    state["visual.attnpool.positional_embedding"] = rnd.normal(side * side + 1, pool, std=pool**-0.5)
    for name in ("k_proj", "q_proj", "v_proj"):
        state[f"visual.attnpool.{name}.weight"] = rnd.normal(pool, pool, std=pool**-0.5)
        state[f"visual.attnpool.{name}.bias"] = rnd.normal(pool)
    state["visual.attnpool.c_proj.weight"] = rnd.normal(_EMBED, pool, std=pool**-0.5)
    state["visual.attnpool.c_proj.bias"] = rnd.normal(_EMBED)
    rnd.text_tower(state)
    return state


#: The built-in families' sample makers and the built-in plugin that owns each.
_BUILTIN_SAMPLES: dict[str, tuple[Callable[..., dict[str, torch.Tensor]], str]] = {
    "OpenAI-layout ViT": (openai_vit_state_dict, "clipkit.builtin.vit"),
    "OpenAI-layout ResNet": (openai_resnet_state_dict, "clipkit.builtin.resnet"),
}


def _unrelated_state_dicts(sample: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
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


# -- model inputs --------------------------------------------------------------------------------


def sample_images(resolution: int, batch: int = 2, *, seed: int = 0) -> torch.Tensor:
    """A ``[batch, 3, resolution, resolution]`` float32 batch of normalised-looking random images."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 3, resolution, resolution), generator=gen)


def sample_tokens(context_length: int, vocab_size: int, batch: int = 3, *, seed: int = 0) -> torch.Tensor:
    """A ``[batch, context_length]`` int64 batch shaped like ``clipkit.tokenize`` output for a vocabulary of ``vocab_size``.

    Each row is start-of-text (``vocab_size - 2``), ordinary ids, end-of-text
    (``vocab_size - 1``, the row's highest id) at a different position per row,
    then zero padding.
    """
    if vocab_size < 3 or context_length < 2:
        raise ValueError(f"sample tokens need vocab_size >= 3 and context_length >= 2, got {vocab_size}, {context_length}")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros((batch, context_length), dtype=torch.long)
    for row in range(batch):
        end = 1 + (row * 5) % (context_length - 1)
        tokens[row, 0] = vocab_size - 2
        if end > 1:
            tokens[row, 1:end] = torch.randint(1, vocab_size - 2, (end - 1,), generator=gen)
        tokens[row, end] = vocab_size - 1
    return tokens


# -- the plugin's own hooks ------------------------------------------------------------------------


class _OwnHooks:
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


def _per_class(request: pytest.FixtureRequest, key: str, make: Callable[[], Any]) -> Any:
    """``make()`` once per test class (cached on the class's collection node, dropped when the class finishes)."""
    node = request.node.getparent(pytest.Class) or request.node
    cache = node.stash.setdefault(_CACHE, {})
    if key not in cache:
        if not cache:
            node.addfinalizer(cache.clear)
        cache[key] = make()
    return cache[key]


def _build_for_loading(hooks: _OwnHooks, spec: ArchSpec) -> Any:
    """The plugin's model as ``clipkit.load`` builds it: on meta, or for real on the CPU when it holds tensors no
    checkpoint can fill (non-persistent buffers computed at construction)."""
    from clipkit.loader import meta_tensors_outside_state_dict

    with torch.device("meta"):
        model = hooks.call("build_model", spec=spec)
    if isinstance(model, torch.nn.Module) and meta_tensors_outside_state_dict(model):
        with torch.device("cpu"):
            model = hooks.call("build_model", spec=spec)
    return model


def _describe(plugin: object) -> str:
    return getattr(plugin, "__name__", type(plugin).__name__)


def _registered_names(registry: Any) -> list[str]:
    return [name for name, _ in registry.pm.list_name_plugin()]


# -- the kit ---------------------------------------------------------------------------------------


class PluginConformance:
    """Inherit from this in a ``Test*`` class to run clipkit's hook-contract checks against your plugin.

    Set ``plugin`` to the module (or object) holding your ``@clipkit.hookimpl``
    functions and implement ``sample_state_dict()`` to return a state dict in
    your plugin's layout (random weights are fine: ``YourModel(spec).state_dict()``).
    Optionally set ``expected_spec`` to the spec detection must return, and
    override ``sample_checkpoint(directory)`` to write the sample the way your
    users' files look. Every check is a separate ``test_*`` method whose failure
    message names the contract that was broken.
    """

    #: the module or object with the ``@clipkit.hookimpl`` functions under test
    plugin: ClassVar[Any] = None
    #: the spec ``detect_architecture`` must return for the sample (``None``: any spec is accepted)
    expected_spec: ClassVar[ArchSpec | None] = None
    #: the name the kit registers the plugin under when it is not registered yet
    plugin_name: ClassVar[str | None] = None

    # -- what the author provides ----------------------------------------------------------

    def sample_state_dict(self) -> Mapping[str, torch.Tensor]:
        """Return a state dict in the plugin's own layout; every subclass must implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} must define sample_state_dict(self) returning a state dict your plugin "
            "claims, e.g. `return MyCLIP(MY_SPEC).state_dict()`"
        )

    def sample_checkpoint(self, directory: Path) -> Path:
        """Write the sample checkpoint under ``directory`` and return the path ``clipkit.load`` should get.

        The default saves ``sample_state_dict()`` with ``torch.save`` as
        ``sample.pt``. Override to write your format's real files (a directory
        with side files, safetensors, a wrapper dict).
        """
        path = Path(directory) / "sample.pt"
        torch.save(dict(self.sample_state_dict()), path)
        return path

    # -- fixtures --------------------------------------------------------------------------

    @pytest.fixture
    def conformance_hooks(self, request: pytest.FixtureRequest) -> _OwnHooks:
        """The plugin's own hook implementations, validated against clipkit's hook specs."""
        if self.plugin is None:
            pytest.fail(f"{type(self).__name__}.plugin is not set: point it at your module of @clipkit.hookimpl functions")
        try:
            return _per_class(request, "hooks", lambda: _OwnHooks(self.plugin))
        except pluggy.PluginValidationError as exc:
            pytest.fail(f"plugin {_describe(self.plugin)} does not match clipkit's hook specs: {exc}")

    @pytest.fixture
    def conformance_sample(self, request: pytest.FixtureRequest) -> dict[str, torch.Tensor]:
        """The author's sample state dict (made once per class), checked to be a non-empty ``{str: Tensor}`` mapping."""
        return _per_class(request, "sample", self._checked_sample)

    def _checked_sample(self) -> dict[str, torch.Tensor]:
        sample = self.sample_state_dict()
        if not isinstance(sample, Mapping) or not sample:
            pytest.fail(f"sample_state_dict() must return a non-empty mapping of tensors, got {type(sample).__name__}")
        bad = [key for key, value in sample.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
        if bad:
            pytest.fail(f"sample_state_dict() must map str keys to tensors; these entries do not: {bad[:5]}")
        return dict(sample)

    @pytest.fixture
    def conformance_spec(self, conformance_hooks: _OwnHooks, conformance_sample: dict[str, torch.Tensor]) -> ArchSpec:
        """The spec the plugin's own ``detect_architecture`` returns for the sample."""
        spec = conformance_hooks.call("detect_architecture", state_dict=conformance_sample, path=None)
        if not isinstance(spec, ArchSpec):
            pytest.fail(
                f"detect_architecture of {_describe(self.plugin)} answered {spec!r} for the sample from "
                "sample_state_dict(); it must claim its own layout with a clipkit.ArchSpec subclass"
            )
        return spec

    @pytest.fixture
    def conformance_model(
        self,
        request: pytest.FixtureRequest,
        conformance_hooks: _OwnHooks,
        conformance_spec: ArchSpec,
        conformance_sample: dict[str, torch.Tensor],
    ) -> torch.nn.Module:
        """The plugin's model for the sample (built once per class): meta-built, loaded by assignment, float32 CPU, eval."""
        from clipkit.loader import load_weights, place

        def make() -> torch.nn.Module:
            model = _build_for_loading(conformance_hooks, conformance_spec)
            if not isinstance(model, torch.nn.Module):
                pytest.fail(
                    f"build_model of {_describe(self.plugin)} answered {model!r} for its own spec {conformance_spec!r}"
                )
            load_weights(model, conformance_sample)
            place(model, torch.device("cpu"), torch.float32)
            return model.eval()

        return _per_class(request, "model", make)

    @pytest.fixture
    def conformance_registry(self) -> Iterator[Any]:
        """The process-wide registry with the plugin registered; afterwards it holds exactly what it held before."""
        from clipkit.plugins import get_registry

        registry = get_registry()
        before = _registered_names(registry)
        added = None
        if not registry.pm.is_registered(self.plugin):
            name = self.plugin_name or f"conformance:{_describe(self.plugin)}"
            added = registry.register(self.plugin, name=name, origin="runtime")
        try:
            yield registry
        finally:
            if added is not None:
                registry.unregister(added)
            after = _registered_names(registry)
            assert after == before, f"the conformance kit changed the plugin registry: {before} -> {after}"

    # -- hooks and detection -----------------------------------------------------------------

    def test_hooks_match_the_hook_specs(self, conformance_hooks: _OwnHooks) -> None:
        """Every ``@hookimpl`` names a real clipkit hook, and the architecture hooks are implemented."""
        try:
            conformance_hooks.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pytest.fail(f"{exc} (clipkit's hooks: register_models, fetch_checkpoint, detect_architecture, "
                        "build_model, make_transform)")
        for hook in ("detect_architecture", "build_model"):
            assert conformance_hooks.implements(hook), (
                f"plugin {_describe(self.plugin)} does not implement {hook}; an architecture plugin needs "
                "detect_architecture and build_model"
            )

    def test_claims_its_sample(self, conformance_hooks: _OwnHooks, conformance_sample: dict[str, torch.Tensor]) -> None:
        """``detect_architecture`` answers the sample with a spec, the same one every time (and ``expected_spec`` if set)."""
        first = conformance_hooks.call("detect_architecture", state_dict=conformance_sample, path=None)
        assert isinstance(first, ArchSpec), (
            f"detect_architecture answered {first!r} for the plugin's own sample; it must return a clipkit.ArchSpec"
        )
        again = conformance_hooks.call("detect_architecture", state_dict=dict(conformance_sample), path=None)
        assert again == first, f"detect_architecture is not deterministic: {first!r} then {again!r}"
        if self.expected_spec is not None:
            assert first == self.expected_spec, (
                f"detect_architecture inferred {first!r}, expected {self.expected_spec!r}"
            )

    def test_spec_is_a_frozen_attrs_archspec(self, conformance_spec: ArchSpec) -> None:
        """The spec is plain data: an attrs class derived from ``ArchSpec``, frozen, hashable, comparable."""
        cls = type(conformance_spec)
        assert attrs.has(cls), f"{cls.__name__} is not an attrs class; declare it with @attrs.frozen(kw_only=True)"
        probe = attrs.evolve(conformance_spec)
        try:
            probe.family = "changed"  # type: ignore[misc]
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            pytest.fail(f"{cls.__name__} is mutable; declare it with @attrs.frozen(kw_only=True)")
        copy = attrs.evolve(conformance_spec)
        assert copy == conformance_spec and hash(copy) == hash(conformance_spec), (
            f"{cls.__name__} instances with equal fields must compare and hash equal"
        )
        assert isinstance(conformance_spec.family, str) and conformance_spec.family, "spec.family must be a non-empty str"
        assert isinstance(conformance_spec.image_resolution, int) and conformance_spec.image_resolution > 0, (
            f"spec.image_resolution must be a positive int, got {conformance_spec.image_resolution!r}"
        )

    def test_spec_repr_round_trips(self, conformance_spec: ArchSpec) -> None:
        """``eval(repr(spec))``, with the spec's class and module in scope, gives an equal spec."""
        cls = type(conformance_spec)
        namespace = {**vars(sys.modules[cls.__module__]), cls.__name__: cls}
        text = repr(conformance_spec)
        try:
            rebuilt = eval(text, namespace)  # noqa: S307 - the plugin's own repr, in a test
        except Exception as exc:
            pytest.fail(f"repr of the spec is not valid Python that rebuilds it: {text} ({type(exc).__name__}: {exc})")
        assert rebuilt == conformance_spec, f"{text} evaluates to {rebuilt!r}, which is not equal to the spec"

    def test_ignores_builtin_checkpoints(self, conformance_hooks: _OwnHooks) -> None:
        """``detect_architecture`` answers ``None`` for OpenAI-layout ViT and ResNet checkpoints (not its own)."""
        for what, (make, owner) in _BUILTIN_SAMPLES.items():
            if self.plugin is sys.modules.get(owner):
                continue
            answer = conformance_hooks.call("detect_architecture", state_dict=make(), path=None)
            assert answer is None, (
                f"detect_architecture of {_describe(self.plugin)} claimed an {what} checkpoint with {answer!r}; "
                f"{owner} owns that layout. Claim only your own key/shape signature"
            )

    def test_ignores_unrelated_state_dicts(
        self, conformance_hooks: _OwnHooks, conformance_sample: dict[str, torch.Tensor]
    ) -> None:
        """``detect_architecture`` answers ``None`` (rather than raising) for state dicts that are not CLIP at all."""
        for what, state_dict in _unrelated_state_dicts(conformance_sample).items():
            try:
                answer = conformance_hooks.call("detect_architecture", state_dict=state_dict, path=None)
            except Exception as exc:
                pytest.fail(f"detect_architecture raised {type(exc).__name__}: {exc} for {what}; answer None instead")
            assert answer is None, f"detect_architecture claimed {what} with {answer!r}; it must answer None"

    def test_builtins_do_not_claim_its_sample(self, conformance_sample: dict[str, torch.Tensor]) -> None:
        """No built-in plugin (other than the plugin itself, when it is one) claims the sample."""
        from clipkit.plugins import PluginRegistry

        builtins = PluginRegistry(entry_points=False)
        answers, failures = builtins.call_all("detect_architecture", state_dict=conformance_sample, path=None)
        others = [(name, spec) for name, spec in answers if builtins.pm.get_plugin(name) is not self.plugin]
        assert not failures, f"built-in plugins failed on the sample: {failures}"
        assert not others, f"built-in plugins claim the plugin's sample: {others}; its key layout must differ"

    def test_one_claimant_through_dispatch(
        self, conformance_registry: Any, conformance_spec: ArchSpec, conformance_sample: dict[str, torch.Tensor]
    ) -> None:
        """Through clipkit's own dispatch, with every installed plugin asked, the plugin is the one claimant."""
        from clipkit.errors import AmbiguousArchitectureError
        from clipkit.loader import detect_architecture

        try:
            spec = detect_architecture(conformance_sample, None, registry=conformance_registry)
        except AmbiguousArchitectureError as exc:
            pytest.fail(f"more than one plugin claims the sample: {exc}")
        assert spec == conformance_spec, f"clipkit's dispatch returned {spec!r}, the plugin alone {conformance_spec!r}"

    # -- building and loading ------------------------------------------------------------------

    def test_build_model_declines_other_families(self, conformance_hooks: _OwnHooks) -> None:
        """``build_model`` answers ``None`` for specs of other families (the built-ins' and an unknown one)."""
        others = {
            "vit": ViTSpec(image_resolution=16, embed_dim=16, context_length=8, vocab_size=64, text_width=32,
                           text_layers=1, text_heads=1, vision_width=32, vision_layers=1, vision_heads=1,
                           vision_patch_size=8),
            "resnet": ResNetSpec(image_resolution=32, embed_dim=16, context_length=8, vocab_size=64, text_width=32,
                                 text_layers=1, text_heads=1, vision_width=8, vision_layers=(1, 1, 1, 1),
                                 vision_heads=4),
            "conformance-unknown": ArchSpec(family="conformance-unknown", image_resolution=16),
        }
        for family, spec in others.items():
            if family in _owned_families(self.plugin):
                continue
            with torch.device("meta"):
                answer = conformance_hooks.call("build_model", spec=spec)
            assert answer is None, (
                f"build_model of {_describe(self.plugin)} built {type(answer).__name__} for a {type(spec).__name__} "
                f"(family {family!r}); it must answer None for specs that are not its own"
            )

    def test_builds_on_the_meta_device(
        self, conformance_registry: Any, conformance_hooks: _OwnHooks, conformance_spec: ArchSpec
    ) -> None:
        """Through clipkit's dispatch, ``build_model`` returns a module whose every parameter and buffer is on meta."""
        from clipkit.loader import build_model

        model = build_model(conformance_spec, registry=conformance_registry)
        with torch.device("meta"):
            own = conformance_hooks.call("build_model", spec=conformance_spec)
        assert type(model) is type(own), (
            f"clipkit's dispatch built a {type(model).__name__} for {conformance_spec!r}, the plugin a "
            f"{type(own).__name__}: another plugin's build_model answers for this spec"
        )
        allocated = [
            f"{name} ({tensor.device})"
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]
            if not tensor.is_meta
        ]
        assert not allocated, (
            f"build_model allocated tensors under torch.device('meta'): {allocated[:8]}; create tensors with "
            "torch.empty/nn.Parameter (which follow the default device), not on an explicit device"
        )
        for method in ("encode_image", "encode_text", "forward"):
            assert callable(getattr(model, method, None)), f"the model built for {conformance_spec!r} has no {method}"

    def test_loads_its_sample_strictly(
        self, conformance_hooks: _OwnHooks, conformance_spec: ArchSpec, conformance_sample: dict[str, torch.Tensor]
    ) -> None:
        """The sample loads into the meta-built model with ``strict=True, assign=True``, filling every tensor."""
        from clipkit.loader import load_weights

        model = _build_for_loading(conformance_hooks, conformance_spec)
        keys = list(conformance_sample)
        load_weights(model, conformance_sample)  # raises StateDictError naming missing/unexpected/mis-shaped keys
        assert list(conformance_sample) == keys, "loading changed the caller's state dict; remap a copy in the pre-hook"
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])

    def test_model_exposes_reference_attributes(self, conformance_model: torch.nn.Module, conformance_spec: ArchSpec) -> None:
        """Like the reference model: ``visual.input_resolution`` (the spec's), ``context_length`` and ``vocab_size``."""
        visual = getattr(conformance_model, "visual", None)
        assert visual is not None, "the model must have a `visual` attribute (the image tower)"
        assert getattr(visual, "input_resolution", None) == conformance_spec.image_resolution, (
            f"model.visual.input_resolution is {getattr(visual, 'input_resolution', None)!r}, "
            f"the spec says {conformance_spec.image_resolution}"
        )
        for name in ("context_length", "vocab_size"):
            value = getattr(conformance_model, name, None)
            assert isinstance(value, int) and value > 0, f"model.{name} must be a positive int, got {value!r}"

    def test_encoders_give_declared_shapes(self, conformance_model: torch.nn.Module, conformance_spec: ArchSpec) -> None:
        """``encode_image`` and ``encode_text`` give finite ``[batch, embed_dim]`` features (the spec's ``embed_dim`` if it has one)."""
        images = sample_images(conformance_spec.image_resolution, 2)
        tokens = sample_tokens(conformance_model.context_length, conformance_model.vocab_size, 3)
        with torch.no_grad():
            image_features = conformance_model.encode_image(images)
            text_features = conformance_model.encode_text(tokens)
        assert image_features.ndim == 2 and image_features.shape[0] == 2, (
            f"encode_image of 2 images gave shape {tuple(image_features.shape)}, expected [2, embed_dim]"
        )
        assert text_features.ndim == 2 and text_features.shape[0] == 3, (
            f"encode_text of 3 texts gave shape {tuple(text_features.shape)}, expected [3, embed_dim]"
        )
        embed = getattr(conformance_spec, "embed_dim", image_features.shape[1])
        assert image_features.shape[1] == text_features.shape[1] == embed, (
            f"image features {tuple(image_features.shape)} and text features {tuple(text_features.shape)} "
            f"must share the joint width {embed}"
        )
        assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all(), "features are not finite"

    def test_forward_gives_logits_both_ways(self, conformance_model: torch.nn.Module, conformance_spec: ArchSpec) -> None:
        """``model(images, tokens)`` is ``(logits_per_image [n_img, n_txt], logits_per_text [n_txt, n_img])``, transposes."""
        images = sample_images(conformance_spec.image_resolution, 2)
        tokens = sample_tokens(conformance_model.context_length, conformance_model.vocab_size, 3)
        with torch.no_grad():
            out = conformance_model(images, tokens)
        assert isinstance(out, tuple) and len(out) == 2, (
            f"forward must return (logits_per_image, logits_per_text), got {type(out).__name__}"
        )
        per_image, per_text = out
        assert tuple(per_image.shape) == (2, 3), f"logits_per_image has shape {tuple(per_image.shape)}, expected (2, 3)"
        assert tuple(per_text.shape) == (3, 2), f"logits_per_text has shape {tuple(per_text.shape)}, expected (3, 2)"
        torch.testing.assert_close(per_text, per_image.t(), msg="logits_per_text must be logits_per_image transposed")

    def test_transform_maps_pil_images_to_the_resolution(self, conformance_registry: Any, conformance_spec: ArchSpec) -> None:
        """Through clipkit's dispatch, the transform maps RGB and greyscale PIL images of any size to ``[3, R, R]``."""
        from PIL import Image

        from clipkit.loader import make_transform

        transform = make_transform(conformance_spec, registry=conformance_registry)
        side = conformance_spec.image_resolution
        for image in (Image.new("RGB", (side * 2 + 3, side + 1), (200, 30, 90)), Image.new("L", (side + 5, side * 3), 77)):
            out = transform(image)
            assert isinstance(out, torch.Tensor) and out.is_floating_point(), (
                f"the transform must return a float tensor, got {type(out).__name__}"
            )
            assert tuple(out.shape) == (3, side, side), (
                f"the transform mapped a {image.mode} {image.size} image to {tuple(out.shape)}, expected (3, {side}, {side})"
            )

    def test_loads_through_clipkit_load(self, conformance_registry: Any, tmp_path: Path) -> None:
        """``clipkit.load(sample_checkpoint, device="cpu")`` gives an eval-mode float32 model and a working preprocess."""
        from PIL import Image

        import clipkit
        from clipkit import checkpoint
        from clipkit.loader import build_for_loading, load_weights, place

        path = self.sample_checkpoint(tmp_path)
        model, preprocess = clipkit.load(path, device="cpu")
        spec = clipkit.inspect(path)
        assert not model.training, "clipkit.load must return the model in eval mode"
        floats = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
        assert floats == {torch.float32}, f"on the CPU clipkit.load gives float32 weights, got {floats}"

        image = preprocess(Image.new("RGB", (50, 40), (10, 120, 240))).unsqueeze(0)
        tokens = sample_tokens(model.context_length, model.vocab_size, 2)
        expected = build_for_loading(spec, registry=conformance_registry)
        load_weights(expected, checkpoint.read_state_dict(path))
        place(expected, torch.device("cpu"), torch.float32)
        expected.eval()
        with torch.no_grad():
            got_logits, _ = model(image, tokens)
            want_logits, _ = expected(image, tokens)
        assert tuple(got_logits.shape) == (1, 2)
        torch.testing.assert_close(
            got_logits, want_logits, msg="clipkit.load's model disagrees with the spec's model built from the same file"
        )


def _owned_families(plugin: object) -> set[str]:
    """The built-in families a plugin owns: ``{"vit"}`` for clipkit.builtin.vit, ``{"resnet"}`` for .resnet, else none."""
    return {
        family
        for family, owner in (("vit", "clipkit.builtin.vit"), ("resnet", "clipkit.builtin.resnet"))
        if plugin is sys.modules.get(owner)
    }
