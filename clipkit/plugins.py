"""The plugin manager: the built-in plugins first, then every ``clipkit`` entry point.

Hooks are dispatched here rather than through pluggy's own caller so that a
plugin that raises is reported by name and hook, and a broken third-party plugin
cannot stop the built-ins from serving checkpoints that are not its own.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import attrs
import pluggy

from clipkit import hookspecs
from clipkit.errors import ClipkitError, PluginError

BUILTIN_PLUGINS: tuple[str, ...] = (
    "clipkit.builtin.models",
    "clipkit.builtin.fetchers",
    "clipkit.builtin.hub",
    "clipkit.builtin.resnet",
    "clipkit.builtin.vit",
    "clipkit.builtin.open_clip",
    "clipkit.builtin.transforms",
    "clipkit.builtin.tokenizers",
    "clipkit.builtin.adapting",
    "clipkit.builtin.sidecar",
)

ENTRY_POINT_GROUP = hookspecs.PROJECT
DISABLE_ENV = "CLIPKIT_DISABLE_PLUGINS"  # comma-separated entry-point names to leave unloaded


#: What a hook must answer: ``(type or tuple of types, how to say it in an error)``.
Returns = tuple[type | tuple[type, ...], str]


class PluginWarning(UserWarning):
    """A third-party plugin failed to import or raised in a hook; clipkit carried on without it."""


@attrs.frozen
class PluginInfo:
    """One registered (or failed) plugin: its name, where it came from, and the hooks it implements.

    ``origin`` is ``"builtin"`` or ``"<distribution> <version>"``; ``error`` is
    the import failure's message for a plugin that could not be loaded.
    """

    name: str
    origin: str
    hooks: tuple[str, ...] = ()
    error: str | None = None


class PluginRegistry:
    """A pluggy ``PluginManager`` plus where each plugin came from and which failed to load."""

    def __init__(self, *, entry_points: bool = True, builtins: tuple[str, ...] = BUILTIN_PLUGINS) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._origins: dict[str, str] = {}
        self.failures: list[PluginInfo] = []
        #: answers derived from the plugins (e.g. the merged model names), dropped whenever plugins change
        self.cache: dict[str, Any] = {}
        for module_name in builtins:
            self.register(importlib.import_module(module_name), name=module_name, origin="builtin")
        if entry_points:
            self._load_entry_points()

    # -- registration ------------------------------------------------------------

    def register(self, plugin: ModuleType | object, *, name: str | None = None, origin: str = "runtime") -> str:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions) and return its name.

        Raises ``PluginError`` for a name already registered, and for a plugin
        with a ``wrapper=True``/``hookwrapper=True`` implementation: clipkit
        calls each implementation itself (to report a failing plugin by name), so
        a wrapper would never run; it is refused rather than silently dropped.
        """
        registered = self.pm.register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin {name!r} is already registered", plugin=name)
        wrappers = sorted(
            impl.function.__name__
            for caller in self.pm.get_hookcallers(plugin) or ()
            for impl in caller.get_hookimpls()
            if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper)
        )
        if wrappers:
            self.pm.unregister(plugin)
            raise PluginError(
                f"plugin {registered!r} declares hook wrappers ({', '.join(wrappers)}); clipkit calls every hook "
                "implementation itself and does not run wrappers: make them plain @clipkit.hookimpl functions",
                plugin=registered,
            )
        self._origins[registered] = origin
        self.cache.clear()
        return registered

    def unregister(self, name: str) -> None:
        """Remove the plugin registered as ``name``."""
        self.pm.unregister(name=name)
        self._origins.pop(name, None)
        self.cache.clear()

    def _load_entry_points(self) -> None:
        disabled = {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.has_plugin(ep.name) or self.pm.is_blocked(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            origin = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "entry point"
            if ep.name in disabled:
                self.pm.set_blocked(ep.name)
                self.failures.append(PluginInfo(ep.name, origin, error=f"disabled by {DISABLE_ENV}"))
                continue
            try:
                self.register(ep.load(), name=ep.name, origin=origin)
            except Exception as exc:  # a broken third-party plugin must not break clipkit
                message = (
                    f"clipkit plugin {ep.name!r} (from {origin}, entry point {ep.value!r}) failed to load "
                    f"and was skipped: {type(exc).__name__}: {exc}"
                )
                self.failures.append(PluginInfo(ep.name, origin, error=message))
                warnings.warn(message, PluginWarning, stacklevel=2)

    # -- introspection -----------------------------------------------------------

    def infos(self) -> list[PluginInfo]:
        """Every registered plugin, then every plugin that failed to load or was disabled, in registration order."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # a blocked (disabled) name
                continue
            hooks = tuple(
                sorted(
                    caller.name
                    for caller in self.pm.get_hookcallers(plugin) or ()
                )
            )
            rows.append(PluginInfo(name, self._origins.get(name, "runtime"), hooks))
        return rows + list(self.failures)

    def origin(self, name: str) -> str:
        """Where the plugin called ``name`` came from: ``"builtin"`` or its distribution."""
        return self._origins.get(name, "runtime")

    # -- dispatch ----------------------------------------------------------------

    def _impls(self, hook_name: str) -> Iterator[pluggy.HookImpl]:
        caller = getattr(self.pm.hook, hook_name)
        # pluggy keeps implementations in reverse call order (trylast first); register() refuses wrappers.
        yield from reversed(caller.get_hookimpls())

    def _call_one(self, impl: pluggy.HookImpl, hook_name: str, kwargs: Mapping[str, Any]) -> tuple[bool, Any]:
        try:
            return True, impl.function(*(kwargs[arg] for arg in impl.argnames))
        except ClipkitError:
            raise  # a deliberate, typed answer (a checksum mismatch, a bad state dict)
        except Exception as exc:
            if self.origin(impl.plugin_name) == "builtin":
                raise  # clipkit's own code: its exception is the truth, not a "plugin bug"
            failure = PluginError(
                f"clipkit plugin {impl.plugin_name!r} raised {type(exc).__name__} in hook "
                f"{hook_name} (plugin from {self.origin(impl.plugin_name)}): {exc}",
                plugin=impl.plugin_name,
                hook=hook_name,
            )
            warnings.warn(f"{failure} (skipped; other plugins were asked)", PluginWarning, stacklevel=3)
            return False, failure

    def _answers(
        self, hook_name: str, kwargs: Mapping[str, Any], failures: list[PluginError], returns: Returns | None
    ) -> Iterator[tuple[str, Any]]:
        """Each plugin's non-``None`` answer in call order, type-checked against ``returns``; failures are appended."""
        for impl in self._impls(hook_name):
            ok, result = self._call_one(impl, hook_name, kwargs)
            if not ok:
                failures.append(result)
            elif result is not None:
                if returns is not None and not isinstance(result, returns[0]):
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} answered {hook_name} with {type(result).__name__}; "
                        f"it must return {returns[1]} or None",
                        plugin=impl.plugin_name,
                        hook=hook_name,
                    )
                yield impl.plugin_name, result

    def call_first(self, hook_name: str, /, *, returns: Returns | None = None, **kwargs: Any) -> Any:
        """Ask plugins in order and return the first non-``None`` answer, or ``None`` if every plugin declined.

        ``returns`` is ``(type, "what it is")``: an answer of another type is a
        ``PluginError`` naming the plugin. Third-party plugins that raise are
        skipped with a ``PluginWarning``; if no plugin answered and one of them
        failed, its ``PluginError`` is raised.
        """
        failures: list[PluginError] = []
        for _, answer in self._answers(hook_name, kwargs, failures, returns):
            return answer
        if failures:
            raise failures[0]
        return None

    def call_all(
        self, hook_name: str, /, *, returns: Returns | None = None, **kwargs: Any
    ) -> tuple[list[tuple[str, Any]], list[PluginError]]:
        """Ask every plugin; return ``([(plugin_name, answer), ...], failures)`` for the non-``None`` answers.

        ``returns`` checks each answer's type as in ``call_first``.
        """
        failures: list[PluginError] = []
        answers = list(self._answers(hook_name, kwargs, failures, returns))
        return answers, failures

    def plugin_names(self, hook_name: str) -> list[str]:
        """The names of the plugins implementing ``hook_name``, in call order."""
        return [impl.plugin_name for impl in self._impls(hook_name)]

    def plugin_doc(self, name: str) -> str:
        """The first line of the plugin's docstring (for error messages that say what a plugin looks for)."""
        doc = (getattr(self.pm.get_plugin(name), "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""


_lock = threading.Lock()
_registry: PluginRegistry | None = None


def get_registry() -> PluginRegistry:
    """The process-wide registry, created on first use (built-ins, then entry points)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = PluginRegistry()
        return _registry


def reload_plugins() -> PluginRegistry:
    """Forget the process-wide registry and build it again, re-reading the ``clipkit`` entry points.

    Use after installing a plugin distribution into a running interpreter.
    """
    global _registry
    importlib.invalidate_caches()
    with _lock:
        _registry = None
    return get_registry()


def register_plugin(plugin: ModuleType | object, name: str | None = None) -> str:
    """Register ``plugin`` with the process-wide registry at run time (no entry point needed); return its name."""
    return get_registry().register(plugin, name=name)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with ``register_plugin``."""
    get_registry().unregister(name)
