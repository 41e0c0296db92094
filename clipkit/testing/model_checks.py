"""The conformance kit's checks of building, loading and running the model (mixed into ``PluginConformance``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipkit.builtin.clip_specs import ResNetSpec, ViTSpec
from clipkit.spec import ArchSpec
from clipkit.testing.harness import OwnHooks, build_for_loading, describe, owned_families
from clipkit.testing.samples import sample_images, sample_tokens


class ModelChecks:
    """``test_*`` methods on ``build_model``, loading, the model's interface and the transform."""

    plugin: Any

    def test_build_model_declines_other_families(self, conformance_hooks: OwnHooks) -> None:
        """``build_model`` answers ``None`` for specs of other families (the built-ins' and an unknown one)."""
        others = {
            "vit": ViTSpec(image_resolution=16, embed_dim=16, context_length=8, vocab_size=64, text_width=32,
                           text_layers=1, text_heads=1, vision_width=32, vision_layers=1, vision_heads=1,
                           vision_patch_size=8),
            "resnet": ResNetSpec(image_resolution=32, embed_dim=16, context_length=8, vocab_size=64, text_width=32,
                                 text_layers=1, text_heads=1, vision_width=8, vision_layers=(1, 1, 1, 1),
                                 vision_heads=4),
            "conformance-unknown": ArchSpec(family="conformance-unknown", image_resolution=16),
        }
        for family, spec in others.items():
            if family in owned_families(self.plugin):
                continue
            with torch.device("meta"):
                answer = conformance_hooks.call("build_model", spec=spec)
            assert answer is None, (
                f"build_model of {describe(self.plugin)} built {type(answer).__name__} for a {type(spec).__name__} "
                f"(family {family!r}); it must answer None for specs that are not its own"
            )

    def test_builds_on_the_meta_device(
        self, conformance_registry: Any, conformance_hooks: OwnHooks, conformance_spec: ArchSpec
    ) -> None:
        """Through clipkit's dispatch, ``build_model`` returns a module whose every parameter and buffer is on meta."""
        from clipkit.loader import build_model

        model = build_model(conformance_spec, registry=conformance_registry)
        with torch.device("meta"):
            own = conformance_hooks.call("build_model", spec=conformance_spec)
        assert type(model) is type(own), (
            f"clipkit's dispatch built a {type(model).__name__} for {conformance_spec!r}, the plugin a "
            f"{type(own).__name__}: another plugin's build_model answers for this spec"
        )
        allocated = [
            f"{name} ({tensor.device})"
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]
            if not tensor.is_meta
        ]
        assert not allocated, (
            f"build_model allocated tensors under torch.device('meta'): {allocated[:8]}; create tensors with "
            "torch.empty/nn.Parameter (which follow the default device), not on an explicit device"
        )
        for method in ("encode_image", "encode_text", "forward"):
            assert callable(getattr(model, method, None)), f"the model built for {conformance_spec!r} has no {method}"

    def test_loads_its_sample_strictly(
        self, conformance_hooks: OwnHooks, conformance_spec: ArchSpec, conformance_sample: dict[str, torch.Tensor]
    ) -> None:
        """The sample loads into the meta-built model with ``strict=True, assign=True``, filling every tensor."""
        from clipkit.loader import load_weights

        model = build_for_loading(conformance_hooks, conformance_spec)
        keys = list(conformance_sample)
        load_weights(model, conformance_sample)  # raises StateDictError naming missing/unexpected/mis-shaped keys
        assert list(conformance_sample) == keys, "loading changed the caller's state dict; remap a copy in the pre-hook"
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])

    def test_model_exposes_reference_attributes(self, conformance_model: torch.nn.Module, conformance_spec: ArchSpec) -> None:
        """Like the reference model: ``visual.input_resolution`` (the spec's), ``context_length`` and ``vocab_size``."""
        visual = getattr(conformance_model, "visual", None)
        assert visual is not None, "the model must have a `visual` attribute (the image tower)"
        assert getattr(visual, "input_resolution", None) == conformance_spec.image_resolution, (
            f"model.visual.input_resolution is {getattr(visual, 'input_resolution', None)!r}, "
            f"the spec says {conformance_spec.image_resolution}"
        )
        for name in ("context_length", "vocab_size"):
            value = getattr(conformance_model, name, None)
            assert isinstance(value, int) and value > 0, f"model.{name} must be a positive int, got {value!r}"

    def test_encoders_give_declared_shapes(self, conformance_model: torch.nn.Module, conformance_spec: ArchSpec) -> None:
        """``encode_image`` and ``encode_text`` give finite ``[batch, embed_dim]`` features (the spec's ``embed_dim`` if it has one)."""
        images = sample_images(conformance_spec.image_resolution, 2)
        tokens = sample_tokens(conformance_model.context_length, conformance_model.vocab_size, 3)
        with torch.no_grad():
            image_features = conformance_model.encode_image(images)
            text_features = conformance_model.encode_text(tokens)
        assert image_features.ndim == 2 and image_features.shape[0] == 2, (
            f"encode_image of 2 images gave shape {tuple(image_features.shape)}, expected [2, embed_dim]"
        )
        assert text_features.ndim == 2 and text_features.shape[0] == 3, (
            f"encode_text of 3 texts gave shape {tuple(text_features.shape)}, expected [3, embed_dim]"
        )
        embed = getattr(conformance_spec, "embed_dim", image_features.shape[1])
        assert image_features.shape[1] == text_features.shape[1] == embed, (
            f"image features {tuple(image_features.shape)} and text features {tuple(text_features.shape)} "
            f"must share the joint width {embed}"
        )
        assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all(), "features are not finite"

    def test_forward_gives_logits_both_ways(self, conformance_model: torch.nn.Module, conformance_spec: ArchSpec) -> None:
        """``model(images, tokens)`` is ``(logits_per_image [n_img, n_txt], logits_per_text [n_txt, n_img])``, transposes."""
        images = sample_images(conformance_spec.image_resolution, 2)
        tokens = sample_tokens(conformance_model.context_length, conformance_model.vocab_size, 3)
        with torch.no_grad():
            out = conformance_model(images, tokens)
        assert isinstance(out, tuple) and len(out) == 2, (
            f"forward must return (logits_per_image, logits_per_text), got {type(out).__name__}"
        )
        per_image, per_text = out
        assert tuple(per_image.shape) == (2, 3), f"logits_per_image has shape {tuple(per_image.shape)}, expected (2, 3)"
        assert tuple(per_text.shape) == (3, 2), f"logits_per_text has shape {tuple(per_text.shape)}, expected (3, 2)"
        torch.testing.assert_close(per_text, per_image.t(), msg="logits_per_text must be logits_per_image transposed")

    def test_transform_maps_pil_images_to_the_resolution(self, conformance_registry: Any, conformance_spec: ArchSpec) -> None:
        """Through clipkit's dispatch, the transform maps RGB and greyscale PIL images of any size to ``[3, R, R]``."""
        from PIL import Image

        from clipkit.loader import make_transform

        transform = make_transform(conformance_spec, registry=conformance_registry)
        side = conformance_spec.image_resolution
        for image in (Image.new("RGB", (side * 2 + 3, side + 1), (200, 30, 90)), Image.new("L", (side + 5, side * 3), 77)):
            out = transform(image)
            assert isinstance(out, torch.Tensor) and out.is_floating_point(), (
                f"the transform must return a float tensor, got {type(out).__name__}"
            )
            assert tuple(out.shape) == (3, side, side), (
                f"the transform mapped a {image.mode} {image.size} image to {tuple(out.shape)}, expected (3, {side}, {side})"
            )

    def test_loads_through_clipkit_load(self, conformance_registry: Any, tmp_path: Path) -> None:
        """``clipkit.load(sample_checkpoint, device="cpu")`` gives an eval-mode float32 model and a working preprocess."""
        from PIL import Image

        import clipkit
        from clipkit import checkpoint
        from clipkit.loader import build_for_loading, load_weights, place

        path = self.sample_checkpoint(tmp_path)
        model, preprocess = clipkit.load(path, device="cpu")
        spec = clipkit.inspect(path)
        assert not model.training, "clipkit.load must return the model in eval mode"
        floats = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
        assert floats == {torch.float32}, f"on the CPU clipkit.load gives float32 weights, got {floats}"

        image = preprocess(Image.new("RGB", (50, 40), (10, 120, 240))).unsqueeze(0)
        tokens = sample_tokens(model.context_length, model.vocab_size, 2)
        expected = build_for_loading(spec, registry=conformance_registry)
        load_weights(expected, checkpoint.read_state_dict(path))
        place(expected, torch.device("cpu"), torch.float32)
        expected.eval()
        with torch.no_grad():
            got_logits, _ = model(image, tokens)
            want_logits, _ = expected(image, tokens)
        assert tuple(got_logits.shape) == (1, 2)
        torch.testing.assert_close(
            got_logits, want_logits, msg="clipkit.load's model disagrees with the spec's model built from the same file"
        )
