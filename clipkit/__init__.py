"""clipkit: load any CLIP checkpoint into a ready dual-encoder model and its preprocessing.

``model, preprocess = clipkit.load("ViT-B/32")`` — see ``clipkit.load``.
"""

from clipkit import errors
from clipkit.builtin.specs import CLIPSpec, ResNetSpec, ViTSpec
from clipkit.hookspecs import hookimpl
from clipkit.spec import ArchSpec, ModelSource

__version__ = "0.1.0"

try:  # the pipeline lands in loader.py; the names above are usable without it
    from clipkit.loader import available_models, inspect, load
    from clipkit.tokenizer import tokenize
except ImportError:  # pragma: no cover - only while the package is being assembled
    pass

__all__ = [
    "ArchSpec",
    "CLIPSpec",
    "ModelSource",
    "ResNetSpec",
    "ViTSpec",
    "available_models",
    "errors",
    "hookimpl",
    "inspect",
    "load",
    "tokenize",
]
