"""clipkit-siglip's SentencePiece tokenizer gives transformers' ``SiglipTokenizer`` ids, without transformers.

The SentencePiece model is trained here on a small corpus (SigLIP's id
layout: pad 0, ``</s>`` 1, ``<unk>`` 2) and saved with a real
``SiglipTokenizer``; both tokenize a varied corpus with SigLIP's rules
(``padding="max_length", truncation=True``).
"""

from __future__ import annotations

import pytest
import torch
from transformers import SiglipTokenizer as TransformersSiglipTokenizer

import clipkit
import siglip_reference as ref
from clipkit.errors import ConfigurationError
from clipkit_siglip import SiglipTokenizer

pytestmark = pytest.mark.filterwarnings("ignore:This sequence already has:UserWarning")  # transformers, on "</s>" texts


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("siglip-tokenizer")
    ref.save_tokenizer(directory, context=64)
    return directory


def reference_ids(directory, texts, length):
    tokenizer = TransformersSiglipTokenizer.from_pretrained(directory)
    return torch.tensor(tokenizer(list(texts), padding="max_length", max_length=length, truncation=True)["input_ids"])


@pytest.mark.parametrize("length", [64, 16, 5])
def test_ids_equal_transformers_on_a_varied_corpus(tokenizer_dir, length):
    ours = SiglipTokenizer(tokenizer_dir, context_length=64, vocab_size=ref.VOCAB)
    want = reference_ids(tokenizer_dir, ref.CORPUS, length)
    got = ours(list(ref.CORPUS), context_length=length)
    mismatched = [text for text, a, b in zip(ref.CORPUS, got.tolist(), want.tolist()) if a != b]
    assert not mismatched, f"ids differ from SiglipTokenizer for {mismatched}"
    assert got.dtype == torch.long and tuple(got.shape) == (len(ref.CORPUS), length)


def test_legacy_false_kept_case_and_extra_tokens_follow_the_tokenizer_config(tmp_path):
    directory = tmp_path / "tok"
    directory.mkdir()
    (directory / "spiece.model").write_bytes(ref.sentencepiece_model())
    TransformersSiglipTokenizer(str(directory / "spiece.model"), legacy=False, do_lower_case=False,
                                additional_special_tokens=["<extra>"]).save_pretrained(directory)
    ours = SiglipTokenizer(directory, context_length=24, vocab_size=ref.VOCAB)
    assert not ours.lowercase
    texts = [*ref.CORPUS, "a cat <extra> on a mat", "<extra>", "x<extra>y </s> <extra>"]
    assert torch.equal(ours(texts), reference_ids(directory, texts, 24))
    assert ours(["<extra>"])[0, 0] == ours.sp.get_piece_size()  # the added token's own id, after the pieces


def test_get_tokenizer_serves_a_loaded_model_and_a_source(siglip_registered, tmp_path):
    ref.save_checkpoint(ref.make_siglip(seed=11), tmp_path / "siglip")
    model, _ = clipkit.load(tmp_path / "siglip", device="cpu")
    from_model = clipkit.get_tokenizer(model)
    from_source = clipkit.get_tokenizer(tmp_path / "siglip")
    assert isinstance(from_model, SiglipTokenizer) and from_model.context_length == model.context_length == 16
    texts = ["a photo of a cat", "", "the " * 40]
    assert torch.equal(from_model(texts), from_source(texts))
    assert torch.equal(from_model(texts), reference_ids(tmp_path / "siglip", texts, 16))
    assert tuple(from_model("one text").shape) == (1, 16)
    with pytest.raises(ConfigurationError, match="more than this model's context of 16"):
        model.encode_text(from_model(texts, context_length=20))


def test_a_vocabulary_larger_than_the_model_is_refused(tokenizer_dir):
    pieces = SiglipTokenizer(tokenizer_dir, context_length=64, vocab_size=ref.VOCAB).sp.get_piece_size()
    with pytest.raises(ConfigurationError, match=f"ids up to {pieces - 1} .* more than the model's 50-token vocabulary"):
        SiglipTokenizer(tokenizer_dir, context_length=64, vocab_size=50)
