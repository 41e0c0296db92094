"""``clipkit.get_tokenizer``: the ``make_tokenizer`` hook picks each family's tokenizer, OpenAI's BPE behind every plugin."""

from __future__ import annotations

import attrs
import pytest
import torch

import clipkit
import factories
from clipkit.errors import ConfigurationError

pytestmark = pytest.mark.filterwarnings("ignore::clipkit.errors.AssumptionWarning")  # bare tiny checkpoints: guessed heads


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A tiny official-layout ViT with CLIP's full vocabulary, so the BPE tokenizer's ids fit it."""
    path = tmp_path_factory.mktemp("tok") / "tiny-vit.pt"
    factories.write_checkpoint(path, factories.TINY_VIT.with_(vocab_size=49408), seed=1)
    return path


TEXTS = ["a photo of a cat", "", "a very long caption " * 10]


def test_loaded_model_gets_openai_bpe_at_its_context_length(vit_checkpoint):
    model, _ = clipkit.load(vit_checkpoint, device="cpu")
    assert model.clipkit_spec == clipkit.inspect(vit_checkpoint)
    tokenizer = clipkit.get_tokenizer(model)
    ids = tokenizer(TEXTS)
    assert ids.dtype == torch.long and tuple(ids.shape) == (3, model.context_length) == (3, 16)
    assert torch.equal(ids, clipkit.tokenize(TEXTS, context_length=16, truncate=True))
    assert tokenizer.context_length == 16 and tokenizer.vocab_size == model.vocab_size
    assert tuple(tokenizer("one text", context_length=8).shape) == (1, 8)
    with torch.no_grad():
        assert torch.isfinite(model.encode_text(ids)).all()


def test_a_source_is_inspected_not_loaded(vit_checkpoint, monkeypatch):
    import clipkit.loader

    def no_build(*args, **kwargs):
        raise AssertionError("get_tokenizer(source) must not build the model")

    monkeypatch.setattr(clipkit.loader, "build_model", no_build)
    tokenizer = clipkit.get_tokenizer(vit_checkpoint)
    assert torch.equal(tokenizer(TEXTS[:1]), clipkit.tokenize(TEXTS[:1], context_length=16))


def test_clipkit_tokenize_is_unchanged():
    with pytest.raises(RuntimeError, match="more than the context length 77"):
        clipkit.tokenize("word " * 100)


@attrs.frozen(kw_only=True)
class WordSpec(clipkit.ArchSpec):
    """A made-up family whose tokenizer counts words."""

    family: str = "words"
    context_length: int = 4
    vocab_size: int = 10


class WordPlugin:
    """Gives a tokenizer for WordSpec only."""

    @clipkit.hookimpl
    def make_tokenizer(self, spec):
        if not isinstance(spec, WordSpec):
            return None

        def tokenizer(texts, context_length=None):
            texts = [texts] if isinstance(texts, str) else texts
            width = context_length or spec.context_length
            return torch.tensor([[min(len(t.split()), 9)] * width for t in texts], dtype=torch.long)

        return tokenizer


def test_a_plugin_answers_before_the_default(registry):
    registry.register(WordPlugin(), name="words")
    spec = WordSpec(image_resolution=8)
    model = torch.nn.Linear(1, 1)
    model.clipkit_spec = spec
    assert clipkit.get_tokenizer(model)(["a b c"]).tolist() == [[3, 3, 3, 3]]
    vit = factories.TINY_VIT.with_(vocab_size=49408).spec()
    model.clipkit_spec = vit
    assert type(clipkit.get_tokenizer(model)).__name__ == "OpenAITokenizer"


def test_a_vocabulary_that_is_not_openais_is_refused(registry):
    model = torch.nn.Linear(1, 1)
    model.clipkit_spec = factories.TINY_VIT.spec()  # 1000 tokens
    with pytest.raises(ConfigurationError, match="has 1000 tokens, not the 49408 of OpenAI's BPE"):
        clipkit.get_tokenizer(model)


def test_a_model_clipkit_did_not_load_has_no_known_tokenizer():
    with pytest.raises(ConfigurationError, match="not returned by clipkit.load"):
        clipkit.get_tokenizer(torch.nn.Linear(1, 1))
