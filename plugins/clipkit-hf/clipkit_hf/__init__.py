"""clipkit-hf: load Hugging Face transformers-format CLIP checkpoints with ``clipkit.load``.

Installed, it registers itself through the ``clipkit`` entry point; then
``clipkit.load("path/to/saved_clip_dir")`` (a ``save_pretrained`` directory with
``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``) or
``clipkit.load("clip.safetensors")`` gives clipkit's ViT CLIP with the same
numbers as ``transformers.CLIPModel``. ``hf_to_openai`` converts a state dict to
OpenAI's layout for saving.
"""

from clipkit_hf.convert import SIGNATURE, hf_to_openai, is_hf_clip
from clipkit_hf.spec import HFCLIPSpec, infer_spec, read_config

__version__ = "0.1.0"

__all__ = ["SIGNATURE", "HFCLIPSpec", "hf_to_openai", "infer_spec", "is_hf_clip", "read_config"]
