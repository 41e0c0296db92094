"""The exception hierarchy: every error clipkit raises on purpose is one of these.

Each class says *what kind* of thing went wrong; each message says what exactly and
what to do next. Several classes also derive from the builtin exception a caller
would naturally catch (``FileNotFoundError``, ``ValueError``, ``ConnectionError``)
so code written against plain Python keeps working.
"""

from __future__ import annotations

from typing import Iterable, Sequence


class ClipkitError(Exception):
    """Base class of every error clipkit raises deliberately."""


# -- configuration and arguments ------------------------------------------------


class ConfigurationError(ClipkitError, ValueError):
    """An argument or setting is invalid (a malformed digest, an unknown device, a bad override)."""


class UnsupportedConfigError(ConfigurationError):
    """A config shipped with the weights asks for something no installed plugin can build.

    ``field`` names the config entry (e.g. ``"model_cfg.vision_cfg.timm_model_name"``)
    and ``path`` the config file. Raised instead of a partial or approximate load.
    """

    def __init__(self, message: str, *, field: str, path: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.path = path


class ContextLengthError(ConfigurationError, RuntimeError):
    """A text is longer than the model's context. Also a ``RuntimeError``, as the reference ``clip.tokenize`` raises."""


class UnknownModelError(ClipkitError, KeyError):
    """A name is neither a registered model, nor a path that exists, nor a URL."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""

    @classmethod
    def for_name(cls, name: str, available: Sequence[str]) -> UnknownModelError:
        """The error for ``name``: the closest available name (difflib, any case) as a suggestion, then them all."""
        import difflib

        folded = {candidate.lower(): candidate for candidate in available}
        close = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.5)
        hint = f" Did you mean {folded[close[0]]!r}?" if close else ""
        return cls(f"{name!r} is not a registered model name, an existing file or a URL.{hint} "
                   f"Available models: {', '.join(available)}")


# -- plugins ----------------------------------------------------------------------


class NoFetcherError(ConfigurationError):
    """No fetcher knows a source's protocol: neither clipkit's own transports nor any ``fetch_checkpoint`` plugin."""

    @classmethod
    def for_source(cls, source: str, scheme: str | None, asked: Sequence[str] = ()) -> NoFetcherError:
        """The error for ``source`` (already redacted) of protocol ``scheme``; ``asked`` names the fetchers asked."""
        fetchers = f" (fetchers asked: {', '.join(asked)})" if asked else ""
        return cls(
            f"no fetcher handles {source!r} (scheme {scheme!r}){fetchers}; use http(s)://, s3://, file://, a local "
            f"path or a protocol fsspec knows, or install the fsspec implementation for {scheme}:// or a clipkit "
            "plugin whose fetch_checkpoint handles it"
        )


class PluginError(ClipkitError):
    """A plugin failed to import, or raised inside a hook.

    ``plugin`` is the plugin's name and ``hook`` the hook it failed in (``None``
    when it failed to import).
    """

    def __init__(self, message: str, *, plugin: str | None = None, hook: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


# -- reading checkpoints --------------------------------------------------------------


class CheckpointError(ClipkitError):
    """A file could not be read as a checkpoint (empty, truncated, or not a checkpoint at all)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A local checkpoint path does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle inside the checkpoint asks for code clipkit refuses to run.

    ``globals`` lists the ``module.name`` references the file asked for.
    """

    def __init__(self, message: str, *, globals: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.globals = tuple(globals)


# -- architecture detection and weights --------------------------------------------------


class ArchitectureError(ClipkitError):
    """No plugin, or more than one, recognised a state dict."""


class NoClaimantError(ArchitectureError):
    """Every plugin was asked and none recognised the state dict."""


class AmbiguousArchitectureError(ArchitectureError):
    """More than one plugin claimed the same state dict. ``claimants`` names them."""

    def __init__(self, message: str, *, claimants: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.claimants = tuple(claimants)


class StateDictError(ClipkitError):
    """A state dict does not fit the model built for it.

    ``missing``, ``unexpected`` and ``mismatched`` (``(key, expected_shape,
    found_shape)`` triples) list the offending keys.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)


# -- adapting and exporting models ------------------------------------------------------


class ResizeError(ConfigurationError):
    """A model cannot run at the asked input size or text length (its family cannot resize, or not to that size)."""


class TowerError(ConfigurationError):
    """A model cannot be loaded one tower at a time (its family does not say how to cut it)."""


class ExportError(ClipkitError):
    """A model cannot be exported to the asked format, or the exported file does not reproduce the model."""


# -- TorchScript ----------------------------------------------------------------------


class JITError(ClipkitError):
    """A TorchScript request cannot be served (``jit=True`` on a plain state dict, a non-CLIP archive)."""


# -- fetching -------------------------------------------------------------------------


class FetchError(ClipkitError, ConnectionError):
    """A remote checkpoint could not be fetched. ``source`` names it."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class SourceNotFoundError(FetchError):
    """The remote server says the object does not exist (HTTP 404, missing S3 key)."""


class AccessDeniedError(FetchError):
    """The remote server refused access (HTTP 401/403, S3 AccessDenied)."""


class OfflineError(FetchError):
    """``CLIPKIT_OFFLINE`` is set and the checkpoint is not in the cache."""


class SourcesExhaustedError(FetchError):
    """Every source of a named model failed (mirror, original, Hub copies).

    ``attempts`` lists ``(source, why)`` for each, in the order tried; the message says the same.
    """

    def __init__(self, message: str, *, source: str | None = None,
                 attempts: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message, source=source)
        self.attempts = tuple(attempts)


class ChecksumError(ClipkitError):
    """A file's SHA-256 does not match the expected digest. Nothing is left in the cache."""

    def __init__(self, message: str, *, source: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.source = source
        self.expected = expected
        self.actual = actual


# -- warnings -------------------------------------------------------------------------


class AssumptionWarning(UserWarning):
    """``clipkit.load`` used a convention default for a field that changes the numbers.

    Issued once per load, when neither the caller, a config file beside the
    weights nor the official release table settled the field. The message names
    each field, the value used and the keyword that overrides it; ``fields``
    holds the field names.
    """

    def __init__(self, message: str, *, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


__all__ = [
    "AccessDeniedError",
    "AssumptionWarning",
    "AmbiguousArchitectureError",
    "ArchitectureError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ChecksumError",
    "ClipkitError",
    "ConfigurationError",
    "ContextLengthError",
    "ExportError",
    "FetchError",
    "JITError",
    "NoClaimantError",
    "OfflineError",
    "PluginError",
    "ResizeError",
    "SourceNotFoundError",
    "SourcesExhaustedError",
    "StateDictError",
    "TowerError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "UnsupportedConfigError",
]
