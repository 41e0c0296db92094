"""clipkit.fetching without a network: digests, cache layout, verified records, local and fsspec sources, the hooks."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import fsspec
import pytest

from clipkit import fetching
from clipkit.fetching import hashing
from clipkit.errors import (
    CheckpointNotFoundError,
    ChecksumError,
    ConfigurationError,
    OfflineError,
    SourceNotFoundError,
)
from clipkit.plugins import PluginRegistry

DATA = os.urandom(50_000)
DIGEST = hashlib.sha256(DATA).hexdigest()
OTHER = hashlib.sha256(b"something else").hexdigest()


@pytest.fixture(autouse=True)
def _fetch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLIPKIT_OFFLINE", "CLIPKIT_PROGRESS", "CLIPKIT_MAX_RETRIES", "CLIPKIT_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLIPKIT_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("CLIPKIT_RETRY_MAX_DELAY", "0.05")


@pytest.fixture
def memory_url() -> str:
    """A file in fsspec's in-memory filesystem (removed afterwards)."""
    url = f"memory://clipkit-tests/{uuid.uuid4().hex}/tiny.pt"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe(path, DATA)
    yield url
    fs.rm(path)


def _visible(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != fetching.META_DIR) if cache.exists() else []


def _meta(cache: Path) -> list[str]:
    meta = cache / fetching.META_DIR
    return sorted(p.name for p in meta.iterdir()) if meta.exists() else []


# -- digest resolution -------------------------------------------------------------------------


def test_argument_digest_wins_over_fragment_and_path() -> None:
    url = f"https://host/clip/{OTHER}/m.pt"
    resolved = fetching.resolve_digest(url, DIGEST.upper())
    assert resolved == fetching.ResolvedSource(url, DIGEST, "argument")


def test_fragment_digest_wins_over_path_and_is_stripped() -> None:
    resolved = fetching.resolve_digest(f"https://host/clip/{OTHER}/m.pt#sha256={DIGEST}")
    assert resolved == fetching.ResolvedSource(f"https://host/clip/{OTHER}/m.pt", DIGEST, "fragment")


def test_path_digest_is_used_when_nothing_explicit() -> None:
    resolved = fetching.resolve_digest(f"https://host/clip/{DIGEST.upper()}/m.pt")
    assert resolved.sha256 == DIGEST and resolved.digest_origin == "path"


def test_no_digest_anywhere() -> None:
    assert fetching.resolve_digest("https://host/a/m.pt?x=1#section") == fetching.ResolvedSource(
        "https://host/a/m.pt?x=1", None, None
    )


def test_argument_and_fragment_that_disagree_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="two different digests"):
        fetching.resolve_digest(f"https://host/m.pt#sha256={DIGEST}", OTHER)


def test_argument_and_fragment_that_agree_are_fine() -> None:
    assert fetching.resolve_digest(f"s3://b/m.pt#sha256={DIGEST}", DIGEST).sha256 == DIGEST


@pytest.mark.parametrize("source, sha256", [
    ("https://host/m.pt", "abc"),
    ("https://host/m.pt", "g" * 64),
    ("https://host/m.pt#sha256=1234", None),
    ("https://host/m.pt#sha256=", None),
    ("s3://bucket/m.pt#sha256=" + "z" * 64, None),
])
def test_malformed_digest_is_a_configuration_error(source: str, sha256: str | None) -> None:
    with pytest.raises(ConfigurationError, match="64 hexadecimal"):
        fetching.resolve_digest(source, sha256)


def test_hash_in_an_object_key_is_kept_unless_it_is_a_digest_fragment() -> None:
    assert fetching.resolve_digest("s3://bucket/run#3/model.pt").location == "s3://bucket/run#3/model.pt"
    assert fetching.resolve_digest(f"s3://bucket/run#3/model.pt#sha256={DIGEST}") == fetching.ResolvedSource(
        "s3://bucket/run#3/model.pt", DIGEST, "fragment"
    )


def test_a_63_hex_directory_is_not_a_digest() -> None:
    assert fetching.digest_in_path(f"https://host/{DIGEST[:63]}/m.pt") is None
    assert fetching.digest_in_path(f"s3://bucket/{DIGEST}/m.pt") == DIGEST
    assert fetching.digest_in_path(f"https://host/{DIGEST}") is None  # the digest must be a directory


# -- cache layout ---------------------------------------------------------------------------------


def test_official_layout_keeps_the_reference_file_name(tmp_path: Path) -> None:
    from clipkit.builtin.models import OFFICIAL_MODELS

    release = OFFICIAL_MODELS["ViT-B/32"]
    assert fetching.cache_path(release.url, tmp_path) == tmp_path / "ViT-B-32.pt"
    mirror = f"http://mirror.example/clip/{release.sha256}/ViT-B-32.pt"
    assert fetching.cache_path(mirror, tmp_path) == tmp_path / "ViT-B-32.pt"
    assert fetching.cache_path("https://host/ViT-B-32.pt", tmp_path, sha256=release.sha256) == tmp_path / "ViT-B-32.pt"


def test_same_file_name_with_different_digests_never_shares_a_slot(tmp_path: Path) -> None:
    from clipkit.builtin.models import OFFICIAL_MODELS

    official = OFFICIAL_MODELS["ViT-B/32"]
    d1 = fetching.cache_path(f"https://one.example/{DIGEST}/open_clip_model.pt", tmp_path)
    d2 = fetching.cache_path(f"https://two.example/{OTHER}/open_clip_model.pt", tmp_path)
    assert (d1.name, d2.name) == (f"open_clip_model-{DIGEST[:12]}.pt", f"open_clip_model-{OTHER[:12]}.pt")
    # the same content from another host, or with its digest given another way, shares d1's slot
    assert fetching.cache_path(f"https://three.example/x/{DIGEST}/open_clip_model.pt", tmp_path) == d1
    assert fetching.cache_path(f"s3://b/open_clip_model.pt#sha256={DIGEST}", tmp_path) == d1
    assert fetching.cache_path("https://b.example/open_clip_model.pt", tmp_path, sha256=DIGEST) == d1
    # an official file name with another digest is not the official file
    assert fetching.cache_path(f"https://m.example/{DIGEST}/ViT-B-32.pt", tmp_path).name == f"ViT-B-32-{DIGEST[:12]}.pt"
    assert fetching.cache_path(official.url, tmp_path, sha256=DIGEST).name == f"ViT-B-32-{DIGEST[:12]}.pt"
    # another official release's digest with this file name is not it either
    rn50 = OFFICIAL_MODELS["RN50"].sha256
    assert fetching.cache_path(f"https://m.example/{rn50}/ViT-B-32.pt", tmp_path).name == f"ViT-B-32-{rn50[:12]}.pt"


def test_two_checkpoints_with_one_file_name_are_both_kept(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    other_data = os.urandom(20_000)
    d1, d2 = DIGEST, hashlib.sha256(other_data).hexdigest()
    run = uuid.uuid4().hex
    urls = {d1: f"memory://clipkit-tests/{run}/{d1}/open_clip_model.pt",
            d2: f"memory://clipkit-tests/{run}/{d2}/open_clip_model.pt"}
    fs.pipe(urls[d1].split("://", 1)[1], DATA)
    fs.pipe(urls[d2].split("://", 1)[1], other_data)
    try:
        paths = {}
        for digest in (d1, d2, d1, d2):
            path = fetching.fetch(urls[digest], cache_dir=tmp_path)
            paths.setdefault(digest, path)
            assert path == paths[digest]
        fs.rm(f"/clipkit-tests/{run}", recursive=True)  # from here on only the cache can answer
        assert fetching.fetch(urls[d1], cache_dir=tmp_path).read_bytes() == DATA
        assert fetching.fetch(urls[d2], cache_dir=tmp_path).read_bytes() == other_data
        assert paths[d1] != paths[d2]
    finally:
        if fs.exists(f"/clipkit-tests/{run}"):
            fs.rm(f"/clipkit-tests/{run}", recursive=True)


def test_other_urls_with_the_same_file_name_do_not_collide(tmp_path: Path) -> None:
    a = fetching.cache_path("https://a.example/model.safetensors", tmp_path)
    b = fetching.cache_path("https://b.example/model.safetensors", tmp_path)
    assert a != b
    assert a.parent == b.parent == tmp_path
    assert a.name.startswith("model-") and a.suffix == ".safetensors"
    assert a == fetching.cache_path("https://a.example/model.safetensors", tmp_path)


def test_s3_endpoint_is_part_of_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    aws = fetching.cache_path("s3://bucket/m.pt", tmp_path)
    minio = fetching.cache_path("s3://bucket/m.pt", tmp_path, {"endpoint_url": "http://127.0.0.1:9000"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert aws != minio == fetching.cache_path("s3://bucket/m.pt", tmp_path)


@pytest.mark.parametrize("url", ["https://host/", "https://host/dir/..", "s3://bucket/.hidden"])
def test_url_without_a_file_name_is_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="file name"):
        fetching.cache_path(url, tmp_path)


# -- local files -------------------------------------------------------------------------------------


def test_local_path_is_returned_in_place_and_verified(tmp_path: Path) -> None:
    path = tmp_path / "mine.pt"
    path.write_bytes(DATA)
    assert fetching.fetch(str(path), cache_dir=tmp_path / "cache", sha256=DIGEST) == path
    assert fetching.fetch(path.as_uri(), cache_dir=tmp_path / "cache") == path
    assert fetching.fetch(f"{path.as_uri()}#sha256={DIGEST}", cache_dir=tmp_path / "cache") == path
    assert not (tmp_path / "cache").exists()  # nothing copied, nothing created


def test_local_mismatch_raises_and_keeps_the_users_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.pt"
    path.write_bytes(DATA)
    with pytest.raises(ChecksumError) as info:
        fetching.verify_file(path, OTHER, source="my checkpoint")
    assert (info.value.expected, info.value.actual, info.value.source) == (OTHER, DIGEST, "my checkpoint")
    assert "my checkpoint" in str(info.value) and OTHER in str(info.value) and DIGEST in str(info.value)
    with pytest.raises(ChecksumError):
        fetching.fetch(f"{path.as_uri()}#sha256={OTHER}", cache_dir=tmp_path)
    assert path.read_bytes() == DATA


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        fetching.fetch((tmp_path / "nope.pt").as_uri(), cache_dir=tmp_path)
    with pytest.raises(CheckpointNotFoundError):
        fetching.verify_file(tmp_path / "nope.pt", DIGEST)


def test_file_url_of_another_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="host"):
        fetching.fetch("file://server/share/m.pt", cache_dir=tmp_path)


# -- the generic fsspec fetcher (memory://) and the cache ----------------------------------------------


def test_memory_url_is_cached_with_its_digest_recorded(tmp_path: Path, memory_url: str) -> None:
    path = fetching.fetch(memory_url, cache_dir=tmp_path)
    assert path.parent == tmp_path and path.read_bytes() == DATA
    record = fetching.read_record(path)
    assert record is not None and record.sha256 == DIGEST and record.size == len(DATA)
    assert record.source == memory_url
    assert _visible(tmp_path) == [path.name]
    assert not [name for name in _meta(tmp_path) if name.endswith(fetching.PART_SUFFIX)]


def test_cache_hit_is_not_rehashed(tmp_path: Path, memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = fetching.fetch(memory_url, cache_dir=tmp_path, sha256=DIGEST)
    fs, path = fsspec.core.url_to_fs(memory_url)
    fs.rm(path)  # the source is gone: only the cache can answer now
    calls: list[Path] = []
    real = fetching.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(Path(p)) or real(p))
    assert fetching.fetch(memory_url, cache_dir=tmp_path, sha256=DIGEST) == first
    assert calls == []
    assert fetching.fetch(memory_url, cache_dir=tmp_path, sha256=DIGEST, force_verify=True) == first
    assert calls == [first]
    fs.pipe(path, DATA)  # for the fixture's teardown


def test_file_changed_after_verification_is_refused_and_removed(tmp_path: Path, memory_url: str) -> None:
    cached = fetching.fetch(memory_url, cache_dir=tmp_path)
    before = cached.stat()
    tampered = bytearray(DATA)
    tampered[100] ^= 0x01
    cached.write_bytes(bytes(tampered))
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime: only ctime tells
    with pytest.raises(ChecksumError, match="changed after clipkit verified it") as info:
        fetching.fetch(memory_url, cache_dir=tmp_path)
    assert info.value.expected == DIGEST
    assert info.value.actual == hashlib.sha256(bytes(tampered)).hexdigest()
    assert not cached.exists() and not fetching.record_path(cached).exists()
    assert fetching.fetch(memory_url, cache_dir=tmp_path).read_bytes() == DATA  # a fresh copy


def test_touched_but_unchanged_file_is_rehashed_once_and_kept(tmp_path: Path, memory_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fetching.fetch(memory_url, cache_dir=tmp_path)
    os.utime(cached, ns=(1, 1))
    calls: list[Path] = []
    real = fetching.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(Path(p)) or real(p))
    assert fetching.fetch(memory_url, cache_dir=tmp_path) == cached
    assert fetching.fetch(memory_url, cache_dir=tmp_path) == cached
    assert calls == [cached]  # once, then the refreshed record is trusted
    assert fetching.read_record(cached).mtime_ns == 1


def test_wrong_digest_for_a_download_leaves_nothing(tmp_path: Path, memory_url: str) -> None:
    with pytest.raises(ChecksumError) as info:
        fetching.fetch(memory_url, cache_dir=tmp_path, sha256=OTHER)
    assert (info.value.expected, info.value.actual) == (OTHER, DIGEST)
    assert memory_url in str(info.value)
    assert _visible(tmp_path) == []
    # no part file, no record: only the (empty) lock file, which is never unlinked (that would race)
    assert [name for name in _meta(tmp_path) if not name.endswith(".lock")] == []


def test_cached_without_digest_then_asked_for_a_different_one(tmp_path: Path, memory_url: str) -> None:
    cached = fetching.fetch(memory_url, cache_dir=tmp_path)
    with pytest.raises(ChecksumError):
        fetching.fetch(memory_url, cache_dir=tmp_path, sha256=OTHER)  # downloads again, still not OTHER
    assert cached.read_bytes() == DATA and fetching.read_record(cached).sha256 == DIGEST
    assert fetching.fetch(memory_url, cache_dir=tmp_path, sha256=DIGEST) == cached


def test_stale_part_files_of_the_target_only_are_cleaned(tmp_path: Path, memory_url: str) -> None:
    target = fetching.cache_path(memory_url, tmp_path)
    meta = tmp_path / fetching.META_DIR
    meta.mkdir(parents=True)
    stale = meta / f"{target.name}.0123456789ab{fetching.PART_SUFFIX}"  # left by a killed download
    neighbour = meta / f"{target.name}.v2.0123456789ab{fetching.PART_SUFFIX}"  # another target's download
    stale.write_bytes(DATA[:10])
    neighbour.write_bytes(DATA[:10])
    assert fetching.fetch(memory_url, cache_dir=tmp_path).read_bytes() == DATA
    assert not stale.exists() and neighbour.exists()


def test_missing_object_is_source_not_found(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError) as info:
        fetching.fetch("memory://clipkit-tests/absent/model.pt", cache_dir=tmp_path)
    assert info.value.source == "memory://clipkit-tests/absent/model.pt"
    assert _visible(tmp_path) == []


def test_unknown_protocol_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="nosuchproto"):
        fetching.fetch("nosuchproto://x/model.pt", cache_dir=tmp_path)


def test_uninstalled_fsspec_protocol_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    try:
        import ocifs  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match="not installed"):
            fetching.fetch("oci://bucket@ns/model.pt", cache_dir=tmp_path)
    else:  # pragma: no cover - only where ocifs happens to be installed
        pytest.skip("ocifs is installed")


# -- offline ----------------------------------------------------------------------------------------------


def test_offline_serves_the_cache_and_refuses_the_rest(tmp_path: Path, memory_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fetching.fetch(memory_url, cache_dir=tmp_path)
    monkeypatch.setenv("CLIPKIT_OFFLINE", "1")
    assert fetching.is_offline()
    assert fetching.fetch(memory_url, cache_dir=tmp_path) == cached
    fs, path = fsspec.core.url_to_fs(memory_url)
    other = f"memory://clipkit-tests/{uuid.uuid4().hex}/other.pt"
    fs.pipe(fsspec.core.url_to_fs(other)[1], DATA)
    with pytest.raises(OfflineError, match="not in the cache.*CLIPKIT_OFFLINE") as info:
        fetching.fetch(other, cache_dir=tmp_path)
    assert info.value.source == other
    assert not fetching.cache_path(other, tmp_path).exists()
    with pytest.raises(OfflineError, match="not in the cache"):
        fetching.fetch(memory_url, cache_dir=tmp_path, sha256=OTHER)  # only a different version is cached
    assert fetching.fetch(memory_url, cache_dir=tmp_path, sha256=DIGEST) == cached
    fs.rm(fsspec.core.url_to_fs(other)[1])


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("0", False), ("", False), ("off", False)])
def test_offline_values(value: str, offline: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPKIT_OFFLINE", value)
    assert fetching.is_offline() is offline


# -- settings, progress --------------------------------------------------------------------------------------


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPKIT_MAX_RETRIES", "2")
    monkeypatch.setenv("CLIPKIT_READ_TIMEOUT", "1.5")
    settings = fetching.FetchSettings.from_env()
    assert (settings.max_retries, settings.read_timeout, settings.retry_base_delay) == (2, 1.5, 0.01)
    monkeypatch.setenv("CLIPKIT_MAX_RETRIES", "many")
    with pytest.raises(ConfigurationError, match="CLIPKIT_MAX_RETRIES"):
        fetching.FetchSettings.from_env()


def test_backoff_grows_and_is_capped() -> None:
    settings = fetching.FetchSettings(retry_base_delay=1.0, retry_max_delay=10.0)
    assert 0.5 <= settings.backoff(1) <= 1.0
    assert 4.0 <= settings.backoff(4) <= 8.0
    assert 5.0 <= settings.backoff(30) <= 10.0
    assert settings.backoff(1, retry_after=7) == 7
    assert settings.backoff(1, retry_after=3600) == 10.0


def test_progress_bar_on_request_and_quiet_otherwise(tmp_path: Path, memory_url: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fetching.fetch(memory_url, cache_dir=tmp_path / "a")
    assert capsys.readouterr().err == ""  # stderr is not a terminal here
    fetching.fetch(memory_url, cache_dir=tmp_path / "b", progress=True)
    err = capsys.readouterr().err
    assert "tiny-" in err and "100%" in err and "48.8k" in err  # name, completion, size (50 000 B)


# -- the hook implementations --------------------------------------------------------------------------------


@pytest.fixture
def fetchers_only() -> PluginRegistry:
    """A registry holding only the built-in fetchers (not the process-wide one)."""
    return PluginRegistry(entry_points=False, builtins=("clipkit.builtin.fetchers",))


def test_hooks_fetch_fsspec_urls_and_decline_the_rest(fetchers_only: PluginRegistry, tmp_path: Path,
                                                      memory_url: str) -> None:
    assert fetchers_only.plugin_names("fetch_checkpoint") == ["clipkit.builtin.fetchers"] * 2
    path = fetchers_only.call_first("fetch_checkpoint", source=memory_url, cache_dir=tmp_path, sha256=DIGEST,
                               storage_options={})
    assert Path(path).read_bytes() == DATA
    for source in ("nosuchproto://x/m.pt", "relative/model.pt", "ViT-B/32"):
        assert fetchers_only.call_first("fetch_checkpoint", source=source, cache_dir=tmp_path, sha256=None,
                                   storage_options={}) is None


def test_hook_serves_file_urls_in_place(fetchers_only: PluginRegistry, tmp_path: Path) -> None:
    path = tmp_path / "mine.pt"
    path.write_bytes(DATA)
    assert fetchers_only.call_first("fetch_checkpoint", source=path.as_uri(), cache_dir=tmp_path / "c",
                               sha256=DIGEST, storage_options={}) == path


def test_plugin_registered_later_is_asked_before_the_generic_fetcher(fetchers_only: PluginRegistry, tmp_path: Path,
                                                                     memory_url: str) -> None:
    from clipkit import hookimpl

    class MemoryOverride:
        @hookimpl
        def fetch_checkpoint(self, source: str) -> Path | None:
            return tmp_path / "from-plugin.pt" if source.startswith("memory://") else None

    fetchers_only.register(MemoryOverride(), name="memory-override")
    assert fetchers_only.call_first("fetch_checkpoint", source=memory_url, cache_dir=tmp_path, sha256=None,
                               storage_options={}) == tmp_path / "from-plugin.pt"
