"""Writing a loaded model in other formats: ONNX per tower, safetensors with a spec sidecar, transformers, TorchScript.

Each writer is a function of the model (as ``clipkit.load`` returns it); the
command line is ``clipkit export SOURCE OUT --format onnx|safetensors|transformers|torchscript``.

- ``to_onnx(model, out_dir, tower=None)``: ``image.onnx`` / ``text.onnx`` with a
  dynamic batch, each verified under onnxruntime (``clipkit[onnx]``);
- ``to_safetensors(model, path)``: OpenAI's key layout plus a small JSON
  sidecar with the spec fields the shapes cannot show, so the file reloads
  with nothing guessed;
- ``to_transformers(model, out_dir)``: a ``CLIPModel`` folder for
  ``transformers`` (and the clipkit-hf plugin);
- ``to_torchscript(model, path)``: an archive shaped like the official releases.

Every writer leaves either complete files or none.
"""

from clipkit.export.onnx import to_onnx
from clipkit.export.safetensors import to_safetensors
from clipkit.export.torchscript import to_torchscript
from clipkit.export.transformers import to_transformers

FORMATS: tuple[str, ...] = ("torchscript", "onnx", "safetensors", "transformers")

__all__ = ["FORMATS", "to_onnx", "to_safetensors", "to_torchscript", "to_transformers"]
