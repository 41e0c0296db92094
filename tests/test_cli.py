"""The ``clipkit`` command, run as a user runs it: a subprocess, its output and its exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import factories
import pytest


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "clipkit", *args], capture_output=True, text=True, timeout=180)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-rn.pt"
    factories.write_checkpoint(path, factories.TINY_RESNET)
    return path


def test_models_lists_the_official_names_and_what_is_cached(tmp_path):
    from clipkit import fetching
    from clipkit.loader import registered_models

    entry = registered_models()["ViT-B/32"]
    fetching.cache_path(entry.url, tmp_path, sha256=entry.sha256).write_bytes(b"x" * 3 * 1024 * 1024)
    lines = run("models", "--download-root", str(tmp_path)).stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:11]}
    assert lines[0].split()[:3] == ["name", "cached", "sources"] and list(rows)[0] == "RN50" and len(rows) == 9
    assert rows["ViT-B/32"][:3] == ["3.0", "MiB", "original*,"] and rows["ViT-L/14@336px"][:2] == ["-", "original,"]
    assert lines[-1].startswith(f"cache: {tmp_path} (1 of 9 cached")
    data = json.loads(run("models", "--download-root", str(tmp_path), "--json").stdout)
    assert [row["name"] for row in data if row["cached"]] == ["ViT-B/32"] and data[5]["size"] == 3 * 1024 * 1024
    assert "https://openaipublic.azureedge.net/clip/models/" in run("models", "--urls").stdout


def test_an_unknown_name_suggests_the_closest():
    proc = run("inspect", "vit-b/32", check=False)
    assert proc.returncode == 2 and "Did you mean 'ViT-B/32'?" in proc.stderr


def test_inspect_prints_a_table_and_json(tiny_resnet):
    lines = run("inspect", str(tiny_resnet)).stdout.splitlines()
    assert lines[0] == f"{tiny_resnet}: ResNetSpec"
    assert lines[2].split() == ["field", "value", "from"]
    value_at, from_at = lines[2].index("value"), lines[2].index("from")
    table = [line for line in lines[4:] if line.strip()][: len(factories.TINY_RESNET.spec().to_dict())]
    rows = {line[:value_at].strip(): line[value_at:from_at].strip() for line in table}
    sources = {line[:value_at].strip(): line[from_at:].strip() for line in table}
    assert table[0].split()[:2] == ["family", "resnet"]
    spec = factories.TINY_RESNET.spec()
    assert rows == {name: ", ".join(map(str, v)) if isinstance(v, tuple) else str(v) for name, v in spec.to_dict().items()}
    assert sources["vision_width"] == "shapes (visual.layer1.0.conv1.weight)"
    assert sources["quick_gelu"].startswith("convention (QuickGELU")
    data = json.loads(run("inspect", str(tiny_resnet), "--json").stdout)
    assert data["class"] == "ResNetSpec" and data["vision_layers"] == [1, 2, 1, 1]
    assert data["provenance"]["vision_heads"].startswith("convention")
    assert data["image_resolution"] == factories.TINY_RESNET.image_resolution


def test_load_reports_what_it_built(tiny_resnet):
    out = run("load", str(tiny_resnet), "--device", "cpu").stdout
    assert "torch.float32 on cpu" in out and "input resolution 64" in out
    assert "own 1000-token vocabulary" in out


def test_load_embeds_a_sentence_with_the_full_vocabulary(tmp_path):
    path = tmp_path / "full-vocab.pt"
    factories.write_checkpoint(path, factories.TINY_VIT.with_(vocab_size=49408, context_length=77))
    assert "text embedding: shape (1, 32)" in run("load", str(path), "--device", "cpu").stdout


def test_plugins_lists_the_builtins_with_their_hooks():
    rows = {row["name"]: row for row in json.loads(run("plugins", "--json").stdout)}
    assert rows["clipkit.builtin.vit"]["origin"] == "builtin"
    assert set(rows["clipkit.builtin.vit"]["hooks"]) == {"build_model", "detect_architecture"}
    assert rows["clipkit.builtin.transforms"]["hooks"] == ["make_transform"]


def test_export_then_load_with_jit(tiny_resnet, tmp_path):
    out = tmp_path / "tiny-rn-jit.pt"
    assert run("export", str(tiny_resnet), str(out), "--dtype", "float16").stdout.strip() == str(out)
    assert "input resolution 64" in run("load", str(out), "--jit", "--device", "cpu").stdout


def test_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    proc = run("inspect", str(bad), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("clipkit: error: ") and "not a checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run("fetch", "ViT-B/32", "--sha256", "xyz", check=False)
    assert proc.returncode == 2 and "64 hexadecimal" in proc.stderr


def test_an_installed_plugin_can_be_disabled_by_name(monkeypatch):
    from clipkit.plugins import PluginRegistry

    names = {info.name for info in PluginRegistry().infos() if info.error is None}
    third_party = sorted(names - {n for n in names if n.startswith("clipkit.builtin.")})
    if not third_party:
        pytest.skip("no third-party plugin is installed in this environment")
    monkeypatch.setenv("CLIPKIT_DISABLE_PLUGINS", third_party[0])
    infos = {info.name: info for info in PluginRegistry().infos()}
    assert infos[third_party[0]].error == "disabled by CLIPKIT_DISABLE_PLUGINS"
    lines = [line for line in run("plugins").stdout.splitlines() if line.startswith(f"{third_party[0]}  [")]
    assert len(lines) == 1 and lines[0].endswith("disabled by CLIPKIT_DISABLE_PLUGINS")
