"""The conformance kit's tokenizer contract: ``make_tokenizer`` and what ``clipkit.get_tokenizer`` gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipkit.builtin.clip_specs import ViTSpec
from clipkit.testing.harness import OwnHooks, describe, owned_families

#: A built-in family's spec with OpenAI's vocabulary: what a plugin's ``make_tokenizer`` must decline.
OPENAI_VIT_SPEC = ViTSpec(image_resolution=16, embed_dim=16, context_length=77, vocab_size=49408, text_width=32,
                          text_layers=1, text_heads=1, vision_width=32, vision_layers=1, vision_heads=1,
                          vision_patch_size=8)


class TokenizerChecks:
    """``test_*`` methods on the tokenizer a plugin's checkpoints get."""

    plugin: Any

    def test_make_tokenizer_declines_other_families(self, conformance_hooks: OwnHooks) -> None:
        """A plugin's ``make_tokenizer`` answers ``None`` for specs that are not its own (a built-in ViT's)."""
        if not conformance_hooks.implements("make_tokenizer") or owned_families(self.plugin):
            return
        answer = conformance_hooks.call("make_tokenizer", spec=OPENAI_VIT_SPEC)
        assert answer is None, (
            f"make_tokenizer of {describe(self.plugin)} answered {answer!r} for a ViTSpec; it must answer None for "
            "specs that are not its own, so the built-in OpenAI tokenizer serves them"
        )

    def test_tokenizer_feeds_encode_text(self, conformance_registry: Any, tmp_path: Path) -> None:
        """``clipkit.get_tokenizer`` of the loaded sample (and of its source) gives ``[n, context_length]`` int64 ids
        below ``vocab_size`` that ``encode_text`` takes; a plugin without a tokenizer whose vocabulary is not OpenAI's
        gets a ``ConfigurationError`` instead, never ids the model cannot use."""
        import clipkit
        from clipkit.errors import ConfigurationError

        path = self.sample_checkpoint(tmp_path)
        model, _ = clipkit.load(path, device="cpu")
        context, vocab = model.context_length, model.vocab_size
        try:
            tokenizer = clipkit.get_tokenizer(model)
        except ConfigurationError as exc:
            assert not OwnHooks(self.plugin).implements("make_tokenizer"), (
                f"make_tokenizer of {describe(self.plugin)} failed for its own sample ({exc}); write the sample "
                "with its tokenizer files in sample_checkpoint"
            )
            assert vocab != OPENAI_VIT_SPEC.vocab_size, f"OpenAI's BPE fits a {vocab}-token model, yet: {exc}"
            return
        texts = ["a photo of a cat", "", "word " * (4 * context)]
        ids = tokenizer(texts)
        assert isinstance(ids, torch.Tensor) and ids.dtype == torch.long and tuple(ids.shape) == (3, context), (
            f"the tokenizer must give a [3, {context}] int64 tensor for 3 texts, got {type(ids).__name__} "
            f"{tuple(getattr(ids, 'shape', ()))} {getattr(ids, 'dtype', '')}"
        )
        assert 0 <= int(ids.min()) and int(ids.max()) < vocab, f"ids outside the model's {vocab}-token vocabulary"
        assert torch.equal(tokenizer(texts), ids), "the tokenizer is not deterministic"
        assert tuple(tokenizer(texts[0]).shape) == (1, context), "one string must give one row"
        short = max(2, context // 2)
        assert tuple(tokenizer(texts, context_length=short).shape) == (3, short), "context_length= must set the width"
        assert (tokenizer.context_length, tokenizer.vocab_size <= vocab) == (context, True), (
            "the tokenizer's context_length and vocab_size attributes must describe it"
        )
        assert torch.equal(clipkit.get_tokenizer(path)(texts), ids), "get_tokenizer(source) differs from get_tokenizer(model)"
        with torch.no_grad():
            features = model.encode_text(ids)
        assert features.shape[0] == 3 and torch.isfinite(features).all(), "encode_text of the tokenizer's ids failed"
