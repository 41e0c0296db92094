"""Broken third-party plugins are reported by name, distribution and hook, and never stop the built-ins.

Three deliberately broken distributions are built in a temp dir and installed
with pip into a private target directory: one whose module fails to import,
one whose hooks raise, and one whose hook implementation has a wrong argument
name (pluggy refuses to register it). A fresh interpreter that sees them only
through ``PYTHONPATH`` then loads a built-in ViT checkpoint, and runs
``clipkit plugins``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clipkit
import factories
from plugin_dists import env_with, pip_install, write_plugin_dist

DISTRIBUTIONS = {
    "clipkit-broken-import": (
        "1.0",
        "broken",
        "clipkit_broken_import",
        '''
        """Needs a module that is not installed."""
        import clipkit_dependency_that_is_not_installed  # noqa: F401
        ''',
    ),
    "clipkit-raising": (
        "2.0",
        "raising",
        "clipkit_raising",
        '''
        """Every hook raises, as a plugin with a bug would."""
        import clipkit


        @clipkit.hookimpl
        def detect_architecture(state_dict):
            raise RuntimeError("detector bug: " + str(len(state_dict)) + " keys")


        @clipkit.hookimpl
        def build_model(spec):
            raise KeyError("builder bug")


        @clipkit.hookimpl
        def make_transform(spec):
            raise ValueError("transform bug")
        ''',
    ),
    "clipkit-bad-hook": (
        "3.0",
        "badhook",
        "clipkit_bad_hook",
        '''
        """Its hook asks for an argument clipkit never passes."""
        import clipkit


        @clipkit.hookimpl
        def detect_architecture(state_dict, checkpoint_file):
            return None
        ''',
    ),
}

CHILD = """
import json, sys, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import clipkit
    from clipkit.errors import NoClaimantError
    from clipkit.plugins import get_registry
    from PIL import Image
    model, preprocess = clipkit.load(sys.argv[1], device="cpu")
    image = preprocess(Image.new("RGB", (45, 40), (20, 200, 90))).unsqueeze(0)
    tokens = torch.load(sys.argv[3], weights_only=True)
    with torch.no_grad():
        logits, _ = model(image, tokens)
    torch.save({"logits": logits, "image": image}, sys.argv[4])
    try:
        clipkit.load(sys.argv[2], device="cpu")
        unclaimed = None
    except NoClaimantError as exc:
        unclaimed = str(exc)
print(json.dumps({
    "model": type(model).__name__,
    "warnings": [[w.category.__name__, str(w.message)] for w in caught],
    "plugins": [[i.name, i.origin, list(i.hooks), i.error] for i in get_registry().infos()],
    "unclaimed": unclaimed,
}))
"""


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    """A directory holding the three broken distributions, installed by pip as a user would install them."""
    sources = tmp_path_factory.mktemp("broken-dists")
    paths = [
        write_plugin_dist(sources / dist, name=dist, version=version, entry_point=entry_name, module=module, code=code)
        for dist, (version, entry_name, module, code) in DISTRIBUTIONS.items()
    ]
    return pip_install(paths, tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def child_run(broken_site, tmp_path_factory):
    """Run the child once: load a built-in ViT checkpoint and an unclaimed one with the broken plugins installed."""
    work = tmp_path_factory.mktemp("child")
    state = factories.write_checkpoint(work / "vit.pt", factories.TINY_VIT, seed=5)
    torch.save({"nobody.weight": torch.zeros(3, 3)}, work / "unclaimed.pt")
    tokens = factories.sample_tokens(factories.TINY_VIT, 3)
    torch.save(tokens, work / "tokens.pt")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(work / "vit.pt"), str(work / "unclaimed.pt"), str(work / "tokens.pt"),
         str(work / "out.pt")],
        env=env_with(broken_site), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, torch.load(work / "out.pt", weights_only=True), work / "vit.pt", tokens, state


def _warnings_about(report, name):
    return [message for category, message in report["warnings"] if category == "PluginWarning" and repr(name) in message]


def test_plugin_that_fails_to_import_is_named_with_its_distribution(child_run):
    report, *_ = child_run
    (message,) = _warnings_about(report, "broken")
    assert "clipkit-broken-import 1.0" in message and "entry point 'clipkit_broken_import'" in message
    assert "ModuleNotFoundError" in message and "clipkit_dependency_that_is_not_installed" in message
    plugins = {name: (origin, hooks, error) for name, origin, hooks, error in report["plugins"]}
    origin, hooks, error = plugins["broken"]
    assert origin == "clipkit-broken-import 1.0" and hooks == [] and "ModuleNotFoundError" in error


def test_plugin_with_an_invalid_hook_signature_is_refused_and_named(child_run):
    report, *_ = child_run
    (message,) = _warnings_about(report, "badhook")
    assert "clipkit-bad-hook 3.0" in message and "checkpoint_file" in message
    assert "badhook" not in [name for name, _, _, error in report["plugins"] if error is None]


def test_plugin_that_raises_is_named_with_its_distribution_and_hook(child_run):
    report, *_ = child_run
    messages = _warnings_about(report, "raising")
    for hook, problem in [("detect_architecture", "RuntimeError: detector bug"), ("build_model", "KeyError"),
                          ("make_transform", "ValueError: transform bug")]:
        matching = [m for m in messages if f"in hook {hook}" in m]
        assert matching, f"no PluginWarning names hook {hook}: {messages}"
        assert all("clipkit-raising 2.0" in m for m in matching), matching
        assert any(problem.split(":")[0] in m for m in matching)
    plugins = {name: (origin, hooks, error) for name, origin, hooks, error in report["plugins"]}
    assert plugins["raising"] == ("clipkit-raising 2.0", ["build_model", "detect_architecture", "make_transform"], None)


def test_builtin_checkpoint_still_loads_with_the_same_numbers(child_run):
    report, result, path, tokens, _ = child_run
    assert report["model"] == "CLIP"
    model, preprocess = clipkit.load(path, device="cpu")  # this process has none of the broken plugins
    with torch.no_grad():
        expected, _ = model(result["image"], tokens)
    torch.testing.assert_close(result["logits"], expected)


def test_unclaimed_checkpoint_lists_the_failure(child_run):
    report, *_ = child_run
    message = report["unclaimed"]
    assert message is not None and "nobody.weight" in message
    assert "clipkit.builtin.vit" in message
    assert "'raising'" in message and "detect_architecture" in message


def test_clipkit_plugins_lists_failures(broken_site):
    both = "from clipkit.cli import main; main(['plugins']); print('--- json'); main(['plugins', '--json'])"
    proc = subprocess.run([sys.executable, "-c", both], env=env_with(broken_site), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text, _, as_json = proc.stdout.partition("--- json")
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "[builtin]" in lines["clipkit.builtin.vit"] and "detect_architecture" in lines["clipkit.builtin.vit"]
    assert "[clipkit-broken-import 1.0]" in lines["broken"] and "FAILED" in lines["broken"]
    assert "[clipkit-bad-hook 3.0]" in lines["badhook"] and "FAILED" in lines["badhook"]
    assert lines["raising"].endswith("[clipkit-raising 2.0]  build_model, detect_architecture, make_transform")
    rows = {row["name"]: row for row in json.loads(as_json)}
    assert "ModuleNotFoundError" in rows["broken"]["error"] and rows["raising"]["error"] is None
    assert rows["raising"]["hooks"] == ["build_model", "detect_architecture", "make_transform"]
