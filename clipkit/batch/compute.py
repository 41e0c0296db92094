"""The model side of a batch run, shared by both engines: load once, encode, normalise, classify zero-shot.

``Encoder`` is built once per process (the local engine's main process, each
Ray actor). Zero-shot classification follows CLIP's recipe: each label is put
into every prompt template, the normalised text embeddings are averaged and
normalised again (prompt ensembling), and an image's score for a label comes
from the cosine similarity scaled by the model's ``logit_scale``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipkit.errors import ConfigurationError

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def score_kind(model: torch.nn.Module) -> str:
    """``"sigmoid"`` for a model trained with a sigmoid loss, else ``"softmax"``.

    A model says so with a ``score`` attribute (``"sigmoid"``/``"softmax"``);
    without one, a non-None ``logit_bias`` means sigmoid.

    Softmax scores are a distribution over the given labels (they sum to 1);
    sigmoid scores are independent per-label probabilities
    ``sigmoid(logit_scale.exp() * cos + logit_bias)`` (SigLIP) and do not.
    """
    declared = getattr(model, "score", None)
    if declared in ("sigmoid", "softmax"):
        return declared
    return "sigmoid" if getattr(model, "logit_bias", None) is not None else "softmax"


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """The templates as a tuple; ``ConfigurationError`` unless each has exactly one ``{}`` for the label."""
    templates = tuple(templates)
    if not templates:
        raise ConfigurationError("at least one prompt template is needed, e.g. 'a photo of a {}.'")
    for template in templates:
        if template.count("{}") != 1:
            raise ConfigurationError(f"prompt template {template!r} must contain '{{}}' exactly once (the label)")
    return templates


def split_preprocess(preprocess: Any) -> tuple[Any, Any]:
    """``(per_image, per_batch)``: what workers run on each image, and what finishes a stacked batch on the device.

    A transform whose ``split()`` returns its two halves (clipkit's default
    preprocessing, see ``CLIPPreprocess.split``) is split there: workers ship
    uint8 pixels, a quarter of the bytes, and the batch is normalised where
    the model runs, with the same result bit for bit. Any other transform runs
    whole per image (``per_batch`` is ``None``).
    """
    split = getattr(type(preprocess), "split", None)
    halves = split(preprocess) if callable(split) else None
    return halves if halves is not None else (preprocess, None)


class Encoder:
    """A loaded model that turns preprocessed images or captions into L2-normalised float32 embeddings.

    ``load_kwargs`` go to ``clipkit.load`` (``download_root``, ``sha256``,
    ``storage_options``, ``jit``, spec overrides). With ``labels`` it also holds
    the zero-shot classifier built from ``templates``.
    """

    def __init__(self, model: str | os.PathLike[str], *, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, load_kwargs: Mapping[str, Any] | None = None,
                 labels: Sequence[str] | None = None, templates: Sequence[str] = DEFAULT_TEMPLATES,
                 top_k: int = 5) -> None:
        import clipkit

        self.model, self.preprocess = clipkit.load(model, device=device, dtype=dtype, **dict(load_kwargs or {}))
        self.per_image, self._finish = split_preprocess(self.preprocess)
        self.model.eval()
        first = next(self.model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self._tokenizer: Any = None
        self.labels = list(labels) if labels else None
        self.top_k = min(top_k, len(self.labels)) if self.labels else 0
        self.score_kind = score_kind(self.model) if self.labels else None
        self._classifier = self._zero_shot_weights(self.labels, check_templates(templates)) if self.labels else None
        side = int(getattr(self.model, "clipkit_spec").image_resolution)
        self.dim = int(self.encode_images(torch.zeros(1, 3, side, side)).shape[1])

    def _tokens(self, texts: Sequence[str]) -> torch.Tensor:
        if self._tokenizer is None:
            import clipkit

            self._tokenizer = clipkit.get_tokenizer(self.model)
        return self._tokenizer(list(texts)).to(self.device)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[n, 3, H, W]`` images → ``[n, dim]`` normalised float32 embeddings (on the model's device).

        ``pixels`` are preprocessed floats, or uint8 from ``per_image`` (then
        normalised here, on the model's device).
        """
        if pixels.dtype == torch.uint8 and self._finish is not None:
            pixels = self._finish(pixels.to(self.device, non_blocking=True))
        features = self.model.encode_image(pixels.to(self.device, self.dtype, non_blocking=True))
        return F.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions → ``[n, dim]`` normalised float32 embeddings (on the model's device)."""
        return F.normalize(self.model.encode_text(self._tokens(texts)).float(), dim=-1)

    def _zero_shot_weights(self, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        weights = []
        for label in labels:
            embeddings = self.encode_texts([template.format(label) for template in templates])
            weights.append(F.normalize(embeddings.mean(dim=0), dim=-1))
        return torch.stack(weights)

    @torch.inference_mode()
    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Each embedding's score for every label, ``[n, labels]`` (softmax or sigmoid: ``self.score_kind``)."""
        if self._classifier is None:
            raise ConfigurationError("this Encoder was built without labels; pass labels= to classify")
        logits = self.model.logit_scale.float().exp() * embeddings @ self._classifier.t()
        if self.score_kind == "sigmoid":
            return torch.sigmoid(logits + self.model.logit_bias.float())
        return logits.softmax(dim=-1)

    def top_labels(self, embeddings: torch.Tensor) -> tuple[list[list[str]], list[list[float]]]:
        """The ``top_k`` labels and their scores for each embedding, best first."""
        values, indices = self.scores(embeddings).topk(self.top_k, dim=-1)
        labels = [[self.labels[i] for i in row] for row in indices.tolist()]
        return labels, values.tolist()

    def outputs(self, embeddings: torch.Tensor) -> dict[str, Any]:
        """The per-row output columns for ``embeddings``: ``embedding`` (numpy) and, when classifying, the labels."""
        result: dict[str, Any] = {"embedding": embeddings.cpu().numpy().astype(np.float32, copy=False)}
        if self.labels:
            result["labels"], result["scores"] = self.top_labels(embeddings)
        return result
