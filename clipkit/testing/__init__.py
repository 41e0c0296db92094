"""The conformance kit: check from your own pytest suite that a clipkit plugin keeps the hook contracts.

A plugin author subclasses ``PluginConformance`` in one of their test modules,
points it at the plugin (the module or object holding the ``@clipkit.hookimpl``
functions) and gives it a sample state dict in the plugin's own layout; pytest
then collects and runs every inherited ``test_*`` method::

    # tests/test_conformance.py of the plugin's distribution
    import clipkit_myvariant
    from clipkit.testing import PluginConformance

    class TestMyVariant(PluginConformance):
        plugin = clipkit_myvariant

        def sample_state_dict(self):
            return clipkit_myvariant.MyCLIP(clipkit_myvariant.EXAMPLE_SPEC).state_dict()

The class name must start with ``Test`` for pytest to collect it. Optional
class attributes and methods to override:

- ``expected_spec``: the exact ``ArchSpec`` detection must return for the sample;
- ``sample_checkpoint(directory)``: write the sample in its real on-disk form
  (a file or a directory, e.g. with a ``config.json`` and the tokenizer's
  files) and return its path; by default the sample state dict is saved with
  ``torch.save``;
- ``plugin_name``: the name used when the kit registers the plugin at run time.

What the checks cover, one test each: the hooks match clipkit's hook specs;
``detect_architecture`` claims the sample, deterministically, and answers
``None`` for OpenAI-layout ViT and ResNet checkpoints (unless the plugin is the
built-in that owns them) and for unrelated state dicts; the built-ins do not
claim the sample; clipkit's real dispatch finds exactly one claimant; the spec
is a frozen, hashable attrs ``ArchSpec`` subclass whose ``repr`` evaluates back
to an equal spec; ``build_model`` declines other families and builds on the meta
device without allocating; the sample loads strictly by assignment through
``clipkit.loader.load_weights``; the model exposes ``visual.input_resolution``,
``context_length`` and ``vocab_size``; ``encode_image``/``encode_text`` give
``[batch, embed_dim]``; ``forward`` gives ``(logits_per_image,
logits_per_text)``, one the transpose of the other; the transform maps PIL
images to ``[3, R, R]``; ``clipkit.load`` loads the sample checkpoint; and the
tokenizer contract: ``make_tokenizer`` declines other families, and
``clipkit.get_tokenizer`` of the loaded sample (and of its path) gives
``[n, context_length]`` int64 ids below ``vocab_size`` that ``encode_text``
takes — or, for a plugin without a tokenizer whose vocabulary is not OpenAI's,
a ``ConfigurationError``.

The kit registers the plugin with the process-wide registry only for the tests
that need clipkit's dispatch (and only when it is not already registered, for
example through its entry point), and checks afterwards that the registry holds
exactly the plugins it held before. This module imports ``pytest``: it is meant
for test suites, not for run-time use.

``openai_vit_state_dict`` and ``openai_resnet_state_dict`` build tiny random
checkpoints in the official OpenAI layout, the kit's stand-ins for "a checkpoint
that is not yours"; ``make_state_dict(CLIPConfig(...))`` builds one of any size
(``clipkit.testing.checkpoints``). ``sample_images`` and ``sample_tokens`` make
model inputs. ``dual_encoder_outputs``, ``assert_outputs_close`` and
``max_difference`` compare a model with a reference implementation;
``plugin_registered`` puts a plugin in clipkit's registry for a test
(``clipkit.testing.reference``).

The kit's parts: ``conformance`` (the base class and its fixtures),
``detection_checks``, ``model_checks`` and ``tokenizer_checks`` (the inherited tests),
``harness`` (the plugin on its own pluggy manager), ``checkpoints`` and ``samples``.
"""

from clipkit.testing.checkpoints import CLIPConfig, make_state_dict, openai_resnet_state_dict, openai_vit_state_dict
from clipkit.testing.conformance import PluginConformance
from clipkit.testing.reference import assert_outputs_close, dual_encoder_outputs, max_difference, plugin_registered
from clipkit.testing.samples import sample_images, sample_tokens

__all__ = [
    "CLIPConfig",
    "PluginConformance",
    "assert_outputs_close",
    "dual_encoder_outputs",
    "make_state_dict",
    "max_difference",
    "openai_resnet_state_dict",
    "openai_vit_state_dict",
    "plugin_registered",
    "sample_images",
    "sample_tokens",
]
