"""hf-hub: and hf:// sources through huggingface_hub: a loopback Hub (HF_ENDPOINT) and Hugging Face caches on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import factories
import pytest
import torch

pytest.importorskip("huggingface_hub")

import clipkit  # noqa: E402
from clipkit.fetching import hub  # noqa: E402
from clipkit.errors import (  # noqa: E402
    AccessDeniedError,
    ChecksumError,
    ConfigurationError,
    OfflineError,
    SourceNotFoundError,
)
from hf_cache import open_clip_config, write_hf_cache  # noqa: E402
from hub_server import HubServer  # noqa: E402

REPO = "timm/tiny_clip.openai"


@pytest.fixture(autouse=True)
def _hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh Hugging Face cache, no token, no offline flags; fast retries."""
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the real Hub is never asked
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("CLIPKIT_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("CLIPKIT_MAX_RETRIES", "1")
    return tmp_path / "hf-cache"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The tiny ViT's random weights as open_clip publishes them, plus a timm-format decoy and its config."""
    root = tmp_path_factory.mktemp("weights")
    state_dict = factories.make_state_dict(factories.TINY_VIT, dtype=torch.float32)
    factories.save_state_dict(state_dict, root / "open_clip_model.safetensors", format="safetensors")
    factories.save_state_dict(state_dict, root / "open_clip_pytorch_model.bin")
    decoy = {"head.weight": torch.zeros(2, 2)}
    factories.save_state_dict(decoy, root / "model.safetensors", format="safetensors")
    return {
        "open_clip_config.json": open_clip_config(factories.TINY_VIT),
        "open_clip_model.safetensors": (root / "open_clip_model.safetensors").read_bytes(),
        "open_clip_pytorch_model.bin": (root / "open_clip_pytorch_model.bin").read_bytes(),
        "config.json": b'{"architecture": "vit_base_patch32_clip_224"}',
        "model.safetensors": (root / "model.safetensors").read_bytes(),
        "README.md": b"# tiny\n",
    }


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    with HubServer() as running:
        monkeypatch.setenv("HF_ENDPOINT", running.endpoint)
        yield running


def _snapshot_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_hf_hub_downloads_only_the_checkpoint_files_and_loads(server: HubServer, weights, _hub_env) -> None:
    commit = server.add_repo(REPO, weights)
    model, _ = clipkit.load(f"hf-hub:{REPO}", device="cpu")
    assert model.visual.input_resolution == factories.TINY_VIT.image_resolution
    assert sorted(server.downloads()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    snapshot = _hub_env / "models--timm--tiny_clip.openai" / "snapshots" / commit
    assert _snapshot_files(snapshot) == ["open_clip_config.json", "open_clip_model.safetensors"]
    before = len(server.downloads())
    clipkit.load(f"hf-hub:{REPO}", device="cpu")  # the cache serves; only the listing is asked again
    assert len(server.downloads()) == before


def test_hf_url_fetches_one_file_at_a_pinned_revision(server: HubServer, weights) -> None:
    """A revision pins the files: after main moves on, @<commit> and @<tag> still give the old bytes."""
    old = server.add_repo(REPO, weights, revision="v1")
    server.add_repo(REPO, {**weights, "open_clip_model.safetensors": weights["model.safetensors"]})
    pinned = hub.fetch_hub(f"hf://{REPO}@{old}/open_clip_model.safetensors")
    tagged = hub.fetch_hub(f"hf://{REPO}@v1/open_clip_model.safetensors")
    latest = hub.fetch_hub(f"hf://{REPO}/open_clip_model.safetensors")
    assert pinned.read_bytes() == tagged.read_bytes() == weights["open_clip_model.safetensors"]
    assert latest.read_bytes() == weights["model.safetensors"]
    assert server.downloads().count("open_clip_model.safetensors") == 2  # the tag reused the commit's file
    assert (pinned.parent / "open_clip_config.json").is_file()  # its layout's config, from the same commit
    assert "config.json" not in server.downloads()  # not transformers' (timm's) config
    model, _ = clipkit.load(f"hf://{REPO}@v1/open_clip_model.safetensors", device="cpu")
    assert model.context_length == factories.TINY_VIT.context_length


@pytest.mark.parametrize("flag", ["HF_HUB_OFFLINE", "CLIPKIT_OFFLINE"])
def test_offline_serves_an_on_disk_cache_without_any_request(server: HubServer, weights, _hub_env, monkeypatch,
                                                            flag: str) -> None:
    files = {k: weights[k] for k in ("open_clip_config.json", "open_clip_model.safetensors", "README.md")}
    commit = write_hf_cache(_hub_env, REPO, files, revision="main").name
    write_hf_cache(_hub_env, REPO, {"open_clip_model.safetensors": weights["model.safetensors"]},
                   revision="other")
    monkeypatch.setenv(flag, "1")
    model, _ = clipkit.load(f"hf-hub:{REPO}", device="cpu")
    assert model.visual.input_resolution == factories.TINY_VIT.image_resolution
    for source in (f"hf://{REPO}/open_clip_model.safetensors", f"hf://{REPO}@{commit}/open_clip_model.safetensors"):
        assert hub.fetch_hub(source).read_bytes() == weights["open_clip_model.safetensors"]
    other = hub.fetch_hub(f"hf://{REPO}@other/open_clip_model.safetensors")
    assert other.read_bytes() == weights["model.safetensors"]
    assert server.requests == [] and server.cdn.requests == []
    with pytest.raises(OfflineError, match="not in the Hugging Face cache"):
        hub.fetch_hub("hf-hub:timm/not_cached")
    with pytest.raises(OfflineError, match="not in the Hugging Face cache"):
        hub.fetch_hub(f"hf://{REPO}/open_clip_pytorch_model.bin")


def test_a_cached_file_changed_on_disk_is_refused_offline(weights, _hub_env, monkeypatch) -> None:
    snapshot = write_hf_cache(_hub_env, REPO, {"open_clip_model.safetensors": weights["open_clip_model.safetensors"]})
    blob = (snapshot / "open_clip_model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ChecksumError) as caught:
        hub.fetch_hub(f"hf://{REPO}/open_clip_model.safetensors")
    assert caught.value.expected == hashlib.sha256(weights["open_clip_model.safetensors"]).hexdigest()
    assert not blob.exists()


def test_bytes_that_do_not_match_the_advertised_sha256_are_refused(server: HubServer, weights, _hub_env) -> None:
    server.add_repo(REPO, weights)
    server.corrupt(REPO, "open_clip_model.safetensors")
    expected = hashlib.sha256(weights["open_clip_model.safetensors"]).hexdigest()
    with pytest.raises(ChecksumError) as caught:
        clipkit.load(f"hf-hub:{REPO}", device="cpu")
    assert caught.value.expected == expected and caught.value.actual != expected
    assert not (_hub_env / "models--timm--tiny_clip.openai" / "blobs" / expected).exists()
    server.add_repo(REPO, weights)  # the CDN serves the right bytes again
    assert clipkit.load(f"hf-hub:{REPO}", device="cpu")[0].visual.input_resolution == 32


def test_missing_repos_files_and_revisions_are_typed(server: HubServer, weights) -> None:
    server.add_repo(REPO, weights)
    with pytest.raises(SourceNotFoundError, match="no repo"):
        hub.fetch_hub("hf-hub:timm/absent")
    with pytest.raises(SourceNotFoundError, match="no revision"):
        hub.fetch_hub(f"hf-hub:{REPO}@v9")
    with pytest.raises(SourceNotFoundError, match="not in repo"):
        hub.fetch_hub(f"hf://{REPO}/absent.safetensors")


def test_hf_token_is_sent(server: HubServer, weights, monkeypatch) -> None:
    server.add_repo("org/private", {"open_clip_model.safetensors": weights["open_clip_model.safetensors"]},
                    token="hf_secret")
    with pytest.raises(SourceNotFoundError, match="HF_TOKEN"):
        hub.fetch_hub("hf-hub:org/private")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert hub.fetch_hub("hf-hub:org/private").is_dir()
    assert server.log("/api/models/org/private")[-1].headers.get("authorization") == "Bearer hf_secret"


def test_without_huggingface_hub_the_error_names_the_extra(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ConfigurationError, match=r"clipkit\[hub\]"):
        clipkit.load(f"hf-hub:{REPO}", device="cpu")


@pytest.mark.parametrize("source, match", [
    ("hf-hub:justaname", "<org>/<name>"),
    ("hf://timm/repo", "names no file"),
    ("hf://datasets/org/set/file.bin", "model repos"),
    ("hf://org/repo/../secret", "inside the repo"),
])
def test_malformed_hub_sources_are_configuration_errors(source: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        hub.parse_hub_source(source)


def test_revisions_parse_as_huggingface_hub_spells_them() -> None:
    assert hub.parse_hub_source("hf-hub:org/repo@refs/pr/1") == hub.HubRef("org/repo", "refs/pr/1")
    assert hub.parse_hub_source("hf://org/repo@refs%2Fpr%2F1/sub/w.bin") == hub.HubRef("org/repo", "refs/pr/1",
                                                                                        "sub/w.bin")


def test_what_was_downloaded_online_serves_offline(server: HubServer, weights, monkeypatch) -> None:
    """One checkpoint's files out of the repo's (a partial snapshot to huggingface_hub) are enough offline."""
    server.add_repo(REPO, weights)
    online = hub.fetch_hub(f"hf-hub:{REPO}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(server.requests)
    assert hub.fetch_hub(f"hf-hub:{REPO}") == online == hub.find_cached(f"hf-hub:{REPO}")
    assert len(server.requests) == asked
