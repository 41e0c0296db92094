"""clipkit-siglip: load transformers-format SigLIP and SigLIP 2 (fixed resolution) checkpoints with ``clipkit.load``.

Installed, it registers itself through the ``clipkit`` entry point ``siglip``;
then ``clipkit.load("path/to/siglip_dir")`` (a ``SiglipModel.save_pretrained``
directory: ``config.json``, ``model.safetensors``, ``preprocessor_config.json``,
``spiece.model``, ``tokenizer_config.json``) gives a pure-torch SigLIP with the
same numbers as ``transformers.SiglipModel``, SigLIP's preprocessing, and
``clipkit.get_tokenizer(model)`` its SentencePiece tokenizer. The model's
logits are sigmoid logits (``model.logit_bias``; ``model.score == "sigmoid"``).
``clipkit_siglip.detect.infer_spec`` reads a spec off a state dict and its files.
"""

from clipkit_siglip.model import SiglipCLIP
from clipkit_siglip.plugin import build_siglip
from clipkit_siglip.signature import SIGNATURE, is_siglip
from clipkit_siglip.spec import SiglipSpec
from clipkit_siglip.tokenizer import SiglipTokenizer
from clipkit_siglip.transform import SiglipTransform

__version__ = "0.1.0"

__all__ = [
    "SIGNATURE",
    "SiglipCLIP",
    "SiglipSpec",
    "SiglipTokenizer",
    "SiglipTransform",
    "build_siglip",
    "is_siglip",
]
