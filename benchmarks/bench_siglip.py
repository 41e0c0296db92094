"""SigLIP through clipkit-siglip against transformers: load, encoders, tokenizer and preprocessing, on the CPU.

A random-weight SigLIP base (``google/siglip-base-patch16-224``'s sizes: two
768-wide, 12-layer towers, 224 px in 16 px patches, 64 tokens of a
32000-token vocabulary) is saved once as transformers saves it, with a
``SiglipTokenizer`` on a SentencePiece model trained on a small corpus (its
vocabulary is small, so the tokenizer rows compare the two implementations'
overheads, not a real vocabulary's cost). Every row is the median of
``--runs`` timings in this process after one warm-up: ``clipkit.load`` vs
``SiglipModel.from_pretrained`` (float32), ``encode_image`` / ``encode_text``
vs ``get_image_features`` / ``get_text_features``, the tokenizers on 1000
captions, and the preprocessing on scikit-image's photos.

Run: ``python benchmarks/bench_siglip.py [--runs 3] [--cache-dir DIR] [--json out.json]``
(needs ``transformers``, ``sentencepiece``, ``scikit-image`` and ``plugins/clipkit-siglip`` installed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

SIZES = dict(text_width=768, text_heads=12, text_mlp=3072, vision_width=768, vision_heads=12, vision_mlp=3072,
             patch=16, resolution=224, context=64, layers=12)


def checkpoint(cache_dir: Path) -> Path:
    """The saved random SigLIP base, written on first use."""
    target = cache_dir / "siglip-base-random"
    if (target / "model.safetensors").exists():
        return target
    sys.path.insert(0, str(_common.REPO / "plugins" / "clipkit-siglip" / "tests"))
    import siglip_reference as ref
    from transformers import SiglipConfig, SiglipModel

    sizes = SIZES
    config = SiglipConfig(
        text_config=dict(vocab_size=32000, hidden_size=sizes["text_width"], intermediate_size=sizes["text_mlp"],
                         num_hidden_layers=sizes["layers"], num_attention_heads=sizes["text_heads"],
                         max_position_embeddings=sizes["context"], pad_token_id=1, eos_token_id=1, bos_token_id=None),
        vision_config=dict(hidden_size=sizes["vision_width"], intermediate_size=sizes["vision_mlp"],
                           num_hidden_layers=sizes["layers"], num_attention_heads=sizes["vision_heads"],
                           image_size=sizes["resolution"], patch_size=sizes["patch"]),
    )
    partial = target.with_name(target.name + ".partial")
    SiglipModel(config).save_pretrained(partial)
    ref.save_processor(partial, context=sizes["context"], resolution=sizes["resolution"])
    partial.rename(target)
    return target


def timed(fn, runs: int) -> float:
    """The median wall time of ``fn()`` over ``runs`` calls, after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _common.median(times)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=_common.DEFAULT_CACHE)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import skimage.data
    import torch
    from PIL import Image
    from transformers import SiglipImageProcessor, SiglipModel, SiglipTokenizer

    import clipkit

    warnings.simplefilter("ignore")
    path = checkpoint(args.cache_dir)
    ours, preprocess = clipkit.load(path, device="cpu")
    theirs = SiglipModel.from_pretrained(path).eval()
    tokenizer, hf_tokenizer = clipkit.get_tokenizer(ours), SiglipTokenizer.from_pretrained(path)
    processor = SiglipImageProcessor.from_pretrained(path)
    words = "a photo of the cat dog on red blue car house tree small large bright dark city night".split()
    rnd = random.Random(0)
    captions = [" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 20))) for _ in range(1000)]
    photos = [Image.open(Path(skimage.data.data_dir) / n).convert("RGB")
              for n in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")] * 8
    images = torch.stack([preprocess(p) for p in photos[:8]])
    ids = tokenizer(captions[:32])

    def hf_tokens() -> object:
        return hf_tokenizer(captions, padding="max_length", max_length=64, truncation=True, return_tensors="pt")

    rows = []
    with torch.inference_mode():
        rows.append(("load (float32)", timed(lambda: clipkit.load(path, device="cpu"), args.runs),
                     timed(lambda: SiglipModel.from_pretrained(path), args.runs)))
        rows.append(("encode_image, 8 x 224 px", timed(lambda: ours.encode_image(images), args.runs),
                     timed(lambda: theirs.get_image_features(pixel_values=images), args.runs)))
        rows.append(("encode_text, 32 x 64 tokens", timed(lambda: ours.encode_text(ids), args.runs),
                     timed(lambda: theirs.get_text_features(input_ids=ids), args.runs)))
    rows.append(("tokenize 1000 captions", timed(lambda: tokenizer(captions), args.runs),
                 timed(hf_tokens, args.runs)))
    rows.append(("preprocess 32 photos", timed(lambda: [preprocess(p) for p in photos], args.runs),
                 timed(lambda: processor(photos, return_tensors="pt"), args.runs)))
    table = [(what, f"{ours_s * 1000:.0f} ms", f"{theirs_s * 1000:.0f} ms", f"{theirs_s / ours_s:.2f}x")
             for what, ours_s, theirs_s in rows]
    print(_common.machine_summary())
    print(_common.markdown_table(("SigLIP base, CPU", "clipkit-siglip", "transformers", "speed-up"), table))
    if args.json:
        args.json.write_text(json.dumps({what: {"clipkit": a, "transformers": b} for what, a, b in rows}, indent=2))


if __name__ == "__main__":
    main()
