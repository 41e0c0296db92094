"""Official names keep working when the CDN does not: mirror first, the original, then the Hub copies; any cache.

The release table's entry for ViT-B/32 is pointed at loopback servers (its
original URL at a LoopbackServer, its Hub copies through HF_ENDPOINT at a
HubServer, under the real repo names); nothing here touches the real network.
The weights are a tiny random ViT, as a release-like TorchScript archive and
as open_clip publishes the same weights on the Hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import attrs
import factories
import pytest
import torch

pytest.importorskip("huggingface_hub")

import clipkit  # noqa: E402
from clipkit import model_sources as sources  # noqa: E402
from clipkit.builtin import models  # noqa: E402
from clipkit.errors import OfflineError, SourcesExhaustedError  # noqa: E402
from hf_cache import open_clip_config, write_hf_cache  # noqa: E402
from http_server import Corrupt, LoopbackServer  # noqa: E402
from hub_server import HubServer  # noqa: E402
from jit_fixtures import make_release_archive  # noqa: E402

NAME = "ViT-B/32"
FILE = "ViT-B-32.pt"
HUB_REPO = "timm/vit_base_patch32_clip_224.openai"
HUB_SOURCE = f"hf-hub:{HUB_REPO}"


@attrs.frozen
class Release:
    archive: bytes
    digest: str
    hub_files: dict[str, bytes]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """One set of random weights: the release-like archive, and open_clip's Hub layout of the same tensors."""
    root = tmp_path_factory.mktemp("release")
    state_dict = make_release_archive(factories.TINY_VIT, root / FILE)
    factories.save_state_dict(state_dict, root / "open_clip_model.safetensors", format="safetensors")
    archive = (root / FILE).read_bytes()
    hub_files = {
        "open_clip_config.json": open_clip_config(factories.TINY_VIT),
        "open_clip_model.safetensors": (root / "open_clip_model.safetensors").read_bytes(),
        "config.json": b'{"architecture": "vit_base_patch32_clip_224"}',
        "model.safetensors": b"timm's own format, never downloaded by clipkit",
    }
    return Release(archive, hashlib.sha256(archive).hexdigest(), hub_files)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fresh caches everywhere (clipkit's, the reference's under a fresh HOME, Hugging Face's); fast retries."""
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME", "CLIPKIT_MIRROR", "CLIPKIT_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the real Hub is never asked
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("CLIPKIT_PROGRESS", "0")
    monkeypatch.setenv("CLIPKIT_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("CLIPKIT_MAX_RETRIES", "1")


@pytest.fixture
def point_release(monkeypatch: pytest.MonkeyPatch, release: Release, registry):
    """Point the release table's ViT-B/32 at ``base/<digest>/ViT-B-32.pt`` (its Hub copies keep their real names).

    Its release table row becomes the tiny architecture's, as the row of a
    release whose weights these are.
    """

    def point(base: str) -> str:
        url = f"{base}/{release.digest}/{FILE}"
        entry = attrs.evolve(models.OFFICIAL_MODELS[NAME], url=url, sha256=release.digest,
                             architecture=factories.TINY_VIT.spec().to_dict())
        monkeypatch.setitem(models.OFFICIAL_MODELS, NAME, entry)
        clipkit.plugins.reload_plugins()
        return url

    return point


@pytest.fixture
def cdn():
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def _features(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return (model.encode_image(factories.sample_images(factories.TINY_VIT)),
                model.encode_text(factories.sample_tokens(factories.TINY_VIT)))


def test_the_release_table_lists_each_names_sources_in_order() -> None:
    entry = models.OFFICIAL_MODELS[NAME]
    assert [c.source for c in sources.candidates(entry)] == [
        entry.url, HUB_SOURCE, "hf-hub:openai/clip-vit-base-patch32"]
    assert [a.source for a in models.OFFICIAL_MODELS["RN50"].alternates] == ["hf-hub:timm/resnet50_clip.openai"]
    with_mirror = sources.candidates(entry, mirror="s3://bucket/clip/")
    assert with_mirror[0].source == f"s3://bucket/clip/{entry.sha256}/{FILE}" and with_mirror[0].kind == "mirror"


def test_original_404_falls_back_to_the_hub_copy(point_release, cdn, hub, release, caplog) -> None:
    url = point_release(cdn.base_url + "/clip/models")
    hub.add_repo(HUB_REPO, release.hub_files)
    with caplog.at_level(logging.INFO, logger="clipkit"):
        model, _ = clipkit.load(NAME, device="cpu")
    assert model.visual.input_resolution == factories.TINY_VIT.image_resolution
    served = sources.last_served(NAME)
    assert served.source == HUB_SOURCE and not served.cached
    assert [a.source for a in served.attempts][:1] == [url] and "404" in served.attempts[0].outcome
    assert cdn.count(f"/clip/models/{release.digest}/{FILE}") == 1  # a 404 is not retried
    assert sorted(hub.downloads()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    warning = [r for r in caplog.records if r.levelno == logging.WARNING and HUB_SOURCE in r.getMessage()]
    assert warning and url in warning[0].getMessage()


def test_a_host_name_that_does_not_resolve_falls_back(point_release, hub, release) -> None:
    point_release("https://openai-cdn.invalid/clip/models")
    hub.add_repo(HUB_REPO, release.hub_files)
    clipkit.load(NAME, device="cpu")
    assert sources.last_served(NAME).source == HUB_SOURCE


def test_when_every_source_fails_one_error_lists_each(point_release, cdn, hub, monkeypatch) -> None:
    url = point_release(cdn.base_url + "/clip/models")
    mirror = cdn.base_url.replace("http://", "http://deploy:s3cr3t@") + "/mirror"
    monkeypatch.setenv("CLIPKIT_MIRROR", mirror)
    with pytest.raises(SourcesExhaustedError) as caught:
        clipkit.load(NAME, device="cpu")
    tried = [source for source, _ in caught.value.attempts]
    entry = models.OFFICIAL_MODELS[NAME]
    shown_mirror = sources.mirror_url(mirror, entry).replace("deploy:s3cr3t@", "***@")
    assert tried == [shown_mirror, url, HUB_SOURCE, "hf-hub:openai/clip-vit-base-patch32"]
    assert "s3cr3t" not in str(caught.value)
    for source, why in caught.value.attempts:
        assert source in str(caught.value) and why in str(caught.value)
    assert all("SourceNotFoundError" in why for _, why in caught.value.attempts)


@pytest.mark.parametrize("flag", ["CLIPKIT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_the_hugging_face_cache_alone_serves_a_name(point_release, release, monkeypatch, tmp_path,
                                                           flag: str) -> None:
    point_release("http://127.0.0.1:9/clip/models")  # nothing listens there: any request would fail
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    write_hf_cache(tmp_path / "hf-cache", HUB_REPO, release.hub_files)
    monkeypatch.setenv(flag, "1")
    model, _ = clipkit.load(NAME, device="cpu")
    served = sources.last_served(NAME)
    assert served.source == HUB_SOURCE and served.cached
    assert model.context_length == factories.TINY_VIT.context_length


def test_offline_the_references_cache_serves_a_name(point_release, release, monkeypatch, tmp_path) -> None:
    """~/.cache/clip (the reference's) holds the file; clipkit's own cache is elsewhere and empty."""
    point_release("http://127.0.0.1:9/clip/models")
    reference = tmp_path / "home" / ".cache" / "clip"
    reference.mkdir(parents=True)
    slot = clipkit.fetching.cache_path(models.OFFICIAL_MODELS[NAME].url, reference)
    slot.write_bytes(release.archive)
    monkeypatch.setenv("CLIPKIT_OFFLINE", "1")
    clipkit.load(NAME, device="cpu")
    assert sources.last_served(NAME).cached and sources.last_served(NAME).path == slot


def test_offline_with_nothing_cached_names_every_source(point_release, monkeypatch) -> None:
    point_release("http://127.0.0.1:9/clip/models")
    monkeypatch.setenv("CLIPKIT_OFFLINE", "1")
    with pytest.raises(OfflineError) as caught:
        clipkit.load(NAME, device="cpu")
    assert HUB_SOURCE in str(caught.value) and models.OFFICIAL_MODELS[NAME].url in str(caught.value)


def test_a_cached_hub_copy_is_used_before_any_download(point_release, cdn, hub, release, tmp_path) -> None:
    point_release(cdn.base_url + "/clip/models")
    cdn.add(f"/clip/models/{release.digest}/{FILE}", release.archive)
    write_hf_cache(tmp_path / "hf-cache", HUB_REPO, release.hub_files)
    clipkit.load(NAME, device="cpu")
    assert sources.last_served(NAME).source == HUB_SOURCE and sources.last_served(NAME).cached
    assert cdn.requests == [] and hub.requests == []


def test_a_loopback_mirror_is_tried_first_and_verified(point_release, cdn, hub, release, monkeypatch) -> None:
    point_release(cdn.base_url + "/clip/models")
    cdn.add(f"/clip/models/{release.digest}/{FILE}", release.archive)
    with LoopbackServer() as mirror:
        mirror.add(f"/store/{release.digest}/{FILE}", release.archive)
        monkeypatch.setenv("CLIPKIT_MIRROR", mirror.base_url + "/store/")
        clipkit.load(NAME, device="cpu")
        assert sources.last_served(NAME).source == mirror.url(f"/store/{release.digest}/{FILE}")
        assert cdn.requests == []
        # a mirror serving other bytes is refused by the same SHA-256, and the original serves
        mirror.add(f"/store/{release.digest}/{FILE}", release.archive, faults=[Corrupt()])
        clipkit.load(NAME, device="cpu", download_root=Path(os.environ["CLIPKIT_CACHE"]) / "other")
        served = sources.last_served(NAME)
        assert served.source == models.OFFICIAL_MODELS[NAME].url
        assert "ChecksumError" in served.attempts[0].outcome


def test_an_s3_mirror_is_used_through_the_mirror_argument(point_release, release, monkeypatch, tmp_path) -> None:
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    point_release("http://127.0.0.1:9/clip/models")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        s3.put_object(Bucket="artifacts", Key=f"clip/{release.digest}/{FILE}", Body=release.archive)
        model, _ = clipkit.load(NAME, device="cpu", mirror="s3://artifacts/clip",
                                storage_options={"endpoint_url": endpoint})
        served = sources.last_served(NAME)
        assert served.source == f"s3://artifacts/clip/{release.digest}/{FILE}" and not served.cached
        assert model.visual.input_resolution == factories.TINY_VIT.image_resolution
    finally:
        server.stop()


def test_the_hub_copy_and_the_archive_load_to_the_same_model(point_release, cdn, hub, release, tmp_path) -> None:
    from PIL import Image

    point_release(cdn.base_url + "/clip/models")
    cdn.add(f"/clip/models/{release.digest}/{FILE}", release.archive)
    original, original_preprocess = clipkit.load(NAME, device="cpu", download_root=tmp_path / "a")
    assert sources.last_served(NAME).source == models.OFFICIAL_MODELS[NAME].url
    cdn.add(f"/clip/models/{release.digest}/{FILE}", b"", status=404)
    hub.add_repo(HUB_REPO, release.hub_files)
    copy, copy_preprocess = clipkit.load(NAME, device="cpu", download_root=tmp_path / "b")
    assert sources.last_served(NAME).source == HUB_SOURCE
    assert copy.clipkit_spec == original.clipkit_spec and copy.clipkit_spec.quick_gelu is True
    # the same values, each settled by what came with the weights: the copy's config, the release table's row
    assert copy.clipkit_spec.provenance_of("quick_gelu").source == "config"
    assert original.clipkit_spec.provenance_of("quick_gelu").source == "release"
    for ours, theirs in zip(_features(copy), _features(original)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    image = Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy())
    torch.testing.assert_close(copy_preprocess(image), original_preprocess(image), rtol=0, atol=0)


def test_jit_needs_the_archive_and_says_so_when_only_a_copy_is_left(point_release, cdn, hub, release) -> None:
    point_release(cdn.base_url + "/clip/models")
    hub.add_repo(HUB_REPO, release.hub_files)
    with pytest.raises(SourcesExhaustedError, match="jit=True runs the original TorchScript archive"):
        clipkit.load(NAME, device="cpu", jit=True)
    assert hub.requests == []  # the archive-only rule is applied before any copy is asked for


def test_the_command_shows_sources_and_which_served(point_release, cdn, hub, release, tmp_path, capsys) -> None:
    from clipkit.cli import main

    url = point_release(cdn.base_url + "/clip/models")
    hub.add_repo(HUB_REPO, release.hub_files)
    assert main(["fetch", NAME]) == 0
    out, err = capsys.readouterr()
    assert (Path(out.strip()) / "open_clip_model.safetensors").is_file()
    assert f"weights from {HUB_SOURCE} (downloaded)" in err and f"{url} failed first" in err
    assert main(["models", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == NAME)
    assert row["cached_from"] == HUB_SOURCE and row["size"] == len(release.hub_files["open_clip_model.safetensors"])
    assert [(s["source"], s["cached"]) for s in row["sources"]][:2] == [(url, False), (HUB_SOURCE, True)]
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME + " "))
    assert f"original, {HUB_SOURCE}*" in line
    assert main(["inspect", NAME]) == 0
    out = capsys.readouterr().out
    assert f"weights from: {HUB_SOURCE} (cached copy)" in out
    assert "files read: open_clip_config.json, open_clip_model.safetensors: open_clip layout" in out


def test_a_bad_setting_for_the_original_is_reported_not_skipped(point_release, cdn, hub, release) -> None:
    """storage_options the https transport does not understand are the caller's to fix: no silent fallback."""
    from clipkit.errors import ConfigurationError

    point_release(cdn.base_url + "/clip/models")
    hub.add_repo(HUB_REPO, release.hub_files)
    with pytest.raises(ConfigurationError, match="storage_options"):
        clipkit.load(NAME, device="cpu", storage_options={"anon": True})
    assert hub.requests == []


def test_without_huggingface_hub_the_hub_copies_are_listed_with_the_extra(point_release, cdn, monkeypatch) -> None:
    import sys

    point_release(cdn.base_url + "/clip/models")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(SourcesExhaustedError, match=r"clipkit\[hub\]"):
        clipkit.load(NAME, device="cpu")


def test_transient_failures_are_retried_before_falling_back_and_410_is_not(point_release, cdn, hub, release,
                                                                          monkeypatch) -> None:
    url = point_release(cdn.base_url + "/clip/models")
    path = f"/clip/models/{release.digest}/{FILE}"
    hub.add_repo(HUB_REPO, release.hub_files)
    monkeypatch.setenv("CLIPKIT_MAX_RETRIES", "2")
    cdn.add(path, release.archive, status=503)
    clipkit.load(NAME, device="cpu")
    assert cdn.count(path) == 3 and sources.last_served(NAME).source == HUB_SOURCE  # 1 try + 2 retries
    assert "503" in sources.last_served(NAME).attempts[0].outcome
    cdn.add(path, release.archive, status=410)
    monkeypatch.setenv("HF_HUB_CACHE", str(Path(os.environ["HF_HUB_CACHE"]) / "fresh"))  # no cached copy left
    clipkit.load(NAME, device="cpu")
    assert cdn.count(path) == 4 and url == sources.last_served(NAME).attempts[0].source


def test_a_sha256_given_with_a_name_keeps_to_the_original_file(point_release, cdn, hub, release) -> None:
    point_release(cdn.base_url + "/clip/models")
    hub.add_repo(HUB_REPO, release.hub_files)
    with pytest.raises(SourcesExhaustedError, match="pins the original file") as caught:
        clipkit.load(NAME, device="cpu", sha256=release.digest)
    assert [source for source, _ in caught.value.attempts][0] == HUB_SOURCE  # skipped, and says why
    assert hub.requests == []


def test_a_directory_mirror_serves_in_place_and_is_checked(point_release, release, tmp_path, monkeypatch) -> None:
    point_release("http://127.0.0.1:9/clip/models")
    store = tmp_path / "share" / "clip" / release.digest
    store.mkdir(parents=True)
    (store / FILE).write_bytes(release.archive)
    monkeypatch.setenv("CLIPKIT_MIRROR", str(tmp_path / "share" / "clip"))
    clipkit.load(NAME, device="cpu")
    served = sources.last_served(NAME)
    assert served.path == store / FILE and served.source == (store / FILE).as_uri()
    (store / FILE).write_bytes(release.archive[:-1] + bytes([release.archive[-1] ^ 1]))
    with pytest.raises(SourcesExhaustedError, match="ChecksumError"):
        clipkit.load(NAME, device="cpu")
    assert (store / FILE).exists()  # the user's file is never deleted
