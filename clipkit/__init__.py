"""clipkit: load any CLIP checkpoint into a ready dual-encoder model and its preprocessing.

``model, preprocess = clipkit.load("ViT-B/32")`` — see ``clipkit.load``.
"""

from clipkit import errors
from clipkit.builtin.clip_specs import CLIPSpec, ResNetSpec, ViTSpec
from clipkit.hookspecs import hookimpl
from clipkit.loader import available_models, inspect, load
from clipkit.spec import AlternateSource, ArchSpec, ModelSource
from clipkit.tokenizer import tokenize
from clipkit.tokenizers import get_tokenizer
from clipkit.version import __version__

__all__ = [
    "AlternateSource",
    "ArchSpec",
    "CLIPSpec",
    "ModelSource",
    "ResNetSpec",
    "ViTSpec",
    "available_models",
    "errors",
    "get_tokenizer",
    "hookimpl",
    "inspect",
    "load",
    "tokenize",
]
