"""Small random ``transformers.SiglipModel``s, their saved directories, and a SentencePiece model trained here.

The numerical and tokenization references for clipkit-siglip's tests: every
model is a ``SiglipModel`` with random weights (LayerNorms, biases, the probe
and ``logit_bias`` perturbed too), saved the way transformers saves it, next to
a ``SiglipTokenizer`` built on a SentencePiece model trained in the test on a
small corpus, and a ``SiglipImageProcessor`` config.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import torch
from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

VOCAB = 160
_WORDS = ("a photo of the cat dog sitting on red blue green car house tree running jumping small large bright dark "
          "image picture with and in at by two three many people street city night day rocket coffee cup").split()
#: texts the tokenizer must agree on: unicode, punctuation, case, whitespace, special tokens, long, empty
CORPUS = (
    "a photo of a cat", "", " ", "A Photo, of THE Dog!!", "café naïve résumé über straße", "日本語 の 写真 🐱 🚀",
    "Ελληνικά κείμενο", "tabs\tand\nnewlines   here", "\u2581underline\u2581text", "don't stop-believing (42)",
    "hello </s> world", "</s>", "x</s>", "<unk> at the start", "ends with </s>", "the " * 40,
    "a b c d e f g h i j k l m n o p q r s t u v w x y z", "  leading and trailing  ", "emoji 🐱 cat 🚀 rocket",
    "numbers 1234 5678 and 3.14159", "MiXeD CaSe WoRdS", "zero\u200bwidth and non\u00a0breaking",
)


def sentencepiece_model() -> bytes:
    """A unigram SentencePiece model trained on a small generated corpus, SigLIP's ids: pad 0, ``</s>`` 1, ``<unk>`` 2."""
    import sentencepiece as spm

    rnd = random.Random(0)
    lines = [" ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(3, 12))) for _ in range(400)]
    lines += ["café naïve résumé über straße", "日本語 の 写真", "emoji 🐱 cat 🚀 rocket", "Ελληνικά κείμενο", "1234 5678"]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=VOCAB, model_type="unigram", pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    return model.getvalue()


def make_siglip(*, text_width: int = 32, text_heads: int = 2, text_mlp: int = 48, vision_width: int = 48,
                vision_heads: int = 3, vision_mlp: int = 40, patch: int = 8, resolution: int = 32, context: int = 16,
                act: str = "gelu_pytorch_tanh", eps: float = 1e-6, layers: int = 2, seed: int = 0) -> SiglipModel:
    """A ``SiglipModel`` of the given sizes with every parameter randomly perturbed (seeded)."""
    config = SiglipConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=text_width, intermediate_size=text_mlp, num_hidden_layers=layers,
                         num_attention_heads=text_heads, max_position_embeddings=context, projection_size=vision_width,
                         hidden_act=act, layer_norm_eps=eps, pad_token_id=1, eos_token_id=1, bos_token_id=None),
        vision_config=dict(hidden_size=vision_width, intermediate_size=vision_mlp, num_hidden_layers=layers,
                           num_attention_heads=vision_heads, image_size=resolution, patch_size=patch, hidden_act=act,
                           layer_norm_eps=eps),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.1 if "norm" in name or name.endswith("bias") else 0.05
            param.add_(torch.randn(param.shape, generator=gen) * scale)
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-3.0)
    return model


def save_tokenizer(directory: Path, context: int = 16) -> SiglipTokenizer:
    """Write ``spiece.model`` and save a transformers ``SiglipTokenizer`` on it into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spiece.model").write_bytes(sentencepiece_model())
    tokenizer = SiglipTokenizer(str(directory / "spiece.model"), model_max_length=context)
    tokenizer.save_pretrained(directory)
    return tokenizer


def save_processor(directory: Path, *, context: int, resolution: int, resample: int = 3) -> SiglipProcessor:
    """Save a ``SiglipProcessor`` (the trained SentencePiece tokenizer and an image processor) into ``directory``."""
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": resolution, "width": resolution}, resample=resample),
        tokenizer=save_tokenizer(directory, context),
    )
    processor.save_pretrained(directory)
    return processor


def save_checkpoint(model: SiglipModel, directory: Path, *, resample: int = 3) -> SiglipProcessor:
    """Save ``model`` as the Hub has SigLIP: weights, config, tokenizer and image processor; return the processor."""
    model.save_pretrained(directory)
    return save_processor(directory, context=model.config.text_config.max_position_embeddings,
                          resolution=model.config.vision_config.image_size, resample=resample)


def images(batch: int = 2, resolution: int = 32, seed: int = 0) -> torch.Tensor:
    """Random ``[batch, 3, R, R]`` pixel values."""
    return torch.randn((batch, 3, resolution, resolution), generator=torch.Generator().manual_seed(seed))


def token_ids(context: int = 16, seed: int = 0) -> torch.Tensor:
    """Three rows of random ids padded with ``</s>`` (1) after different lengths."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.ones((3, context), dtype=torch.long)
    for row, end in enumerate((3, context // 2, context)):
        rows[row, :end] = torch.randint(3, VOCAB, (end,), generator=gen)
    return rows


def reference_outputs(model: SiglipModel, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """transformers' image and text features and both logits."""
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values)
        return {
            "image": model.get_image_features(pixel_values=pixel_values).pooler_output,
            "text": model.get_text_features(input_ids=input_ids).pooler_output,
            "logits_per_image": out.logits_per_image,
            "logits_per_text": out.logits_per_text,
        }
