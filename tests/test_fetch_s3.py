"""Fetching from s3:// against a real S3-compatible server on 127.0.0.1 (moto's server mode, as s3fs's tests do)."""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from clipkit import fetching  # noqa: E402
from clipkit.errors import AccessDeniedError, ChecksumError, OfflineError, SourceNotFoundError  # noqa: E402
from clipkit.plugins import PluginRegistry  # noqa: E402

DATA = os.urandom(200_000)
DIGEST = hashlib.sha256(DATA).hexdigest()
OTHER = hashlib.sha256(b"not it").hexdigest()
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint() -> str:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials only, no config files, no instance metadata: nothing can reach the real AWS."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name in ("CLIPKIT_OFFLINE", "CLIPKIT_PROGRESS", "CLIPKIT_READ_TIMEOUT"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CLIPKIT_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("CLIPKIT_MAX_RETRIES", "1")


@pytest.fixture
def s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS)


@pytest.fixture
def bucket(s3) -> str:
    """A fresh bucket holding ``private/tiny.pt`` (private ACL) and ``public/tiny.pt`` (public-read)."""
    name = f"clipkit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="private/tiny.pt", Body=DATA)
    s3.put_object(Bucket=name, Key="public/tiny.pt", Body=DATA, ACL="public-read")
    return name


def test_credentialed_fetch_with_endpoint_option(tmp_path: Path, endpoint: str, bucket: str, s3) -> None:
    url = f"s3://{bucket}/private/tiny.pt"
    path = fetching.fetch(url, cache_dir=tmp_path, storage_options={"endpoint_url": endpoint})
    assert path.parent == tmp_path and path.name.startswith("tiny-") and path.read_bytes() == DATA
    assert fetching.read_record(path).sha256 == DIGEST  # no digest given: the computed one is recorded
    s3.delete_object(Bucket=bucket, Key="private/tiny.pt")
    assert fetching.fetch(url, cache_dir=tmp_path, storage_options={"endpoint_url": endpoint}) == path  # cache hit


def test_endpoint_from_aws_endpoint_url(tmp_path: Path, endpoint: str, bucket: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # honoured by botocore; clipkit passes nothing
    assert fetching.fetch(f"s3://{bucket}/private/tiny.pt", cache_dir=tmp_path).read_bytes() == DATA


def test_key_and_secret_as_storage_options(tmp_path: Path, endpoint: str, bucket: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    assert fetching.fetch(f"s3://{bucket}/private/tiny.pt", cache_dir=tmp_path,
                          storage_options=options).read_bytes() == DATA


def test_digest_from_argument_fragment_and_key(tmp_path: Path, endpoint: str, bucket: str, s3) -> None:
    options = {"endpoint_url": endpoint}
    url = f"s3://{bucket}/private/tiny.pt"
    assert fetching.fetch(url, cache_dir=tmp_path / "a", sha256=DIGEST, storage_options=options).read_bytes() == DATA
    assert fetching.fetch(f"{url}#sha256={DIGEST}", cache_dir=tmp_path / "b",
                          storage_options=options).read_bytes() == DATA
    s3.put_object(Bucket=bucket, Key=f"clip/{DIGEST}/Tiny.pt", Body=DATA)  # a mirror of the release layout
    path = fetching.fetch(f"s3://{bucket}/clip/{DIGEST}/Tiny.pt", cache_dir=tmp_path / "c", storage_options=options)
    assert path == tmp_path / "c" / f"Tiny-{DIGEST[:12]}.pt" and fetching.read_record(path).sha256 == DIGEST


def test_wrong_digest_leaves_nothing(tmp_path: Path, endpoint: str, bucket: str) -> None:
    url = f"s3://{bucket}/private/tiny.pt"
    with pytest.raises(ChecksumError) as info:
        fetching.fetch(url, cache_dir=tmp_path, sha256=OTHER, storage_options={"endpoint_url": endpoint})
    assert (info.value.source, info.value.expected, info.value.actual) == (url, OTHER, DIGEST)
    assert [p.name for p in tmp_path.iterdir() if p.name != fetching.META_DIR] == []
    assert [p.name for p in (tmp_path / fetching.META_DIR).iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("url", ["s3://{bucket}/private/absent.pt", "s3://clipkit-no-such-bucket/tiny.pt"])
def test_missing_key_or_bucket(tmp_path: Path, endpoint: str, bucket: str, url: str) -> None:
    url = url.format(bucket=bucket)
    with pytest.raises(SourceNotFoundError, match="does not exist") as info:
        fetching.fetch(url, cache_dir=tmp_path, storage_options={"endpoint_url": endpoint})
    assert info.value.source == url


def test_anonymous_reads_a_public_object(tmp_path: Path, endpoint: str, bucket: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    path = fetching.fetch(f"s3://{bucket}/public/tiny.pt", cache_dir=tmp_path,
                          storage_options={"endpoint_url": endpoint, "anon": True})
    assert path.read_bytes() == DATA


def test_anonymous_is_refused_a_private_object(tmp_path: Path, endpoint: str, bucket: str) -> None:
    url = f"s3://{bucket}/private/tiny.pt"
    with pytest.raises(AccessDeniedError, match="anonymous access") as info:
        fetching.fetch(url, cache_dir=tmp_path, storage_options={"endpoint_url": endpoint, "anon": True})
    assert info.value.source == url


def test_no_credentials_is_access_denied(tmp_path: Path, endpoint: str, bucket: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AccessDeniedError, match="credentials"):
        fetching.fetch(f"s3://{bucket}/private/tiny.pt", cache_dir=tmp_path, storage_options={"endpoint_url": endpoint})


def test_offline_serves_cached_s3_objects_only(tmp_path: Path, endpoint: str, bucket: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"endpoint_url": endpoint}
    cached = fetching.fetch(f"s3://{bucket}/private/tiny.pt", cache_dir=tmp_path, storage_options=options)
    monkeypatch.setenv("CLIPKIT_OFFLINE", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # would fail if anything were contacted
    assert fetching.fetch(f"s3://{bucket}/private/tiny.pt", cache_dir=tmp_path, storage_options=options) == cached
    with pytest.raises(OfflineError):
        fetching.fetch(f"s3://{bucket}/public/tiny.pt", cache_dir=tmp_path, storage_options=options)


def test_hook_passes_storage_options(tmp_path: Path, endpoint: str, bucket: str) -> None:
    registry = PluginRegistry(entry_points=False, builtins=("clipkit.builtin.fetchers",))
    path = registry.call_first("fetch_checkpoint", source=f"s3://{bucket}/public/tiny.pt", cache_dir=tmp_path,
                               sha256=DIGEST, storage_options={"endpoint_url": endpoint, "anon": True})
    assert Path(path).read_bytes() == DATA


def test_load_from_s3(tmp_path: Path, endpoint: str, bucket: str, s3) -> None:
    import factories
    import torch

    import clipkit

    local = tmp_path / "tiny-resnet.pt"
    factories.save_state_dict(factories.make_state_dict(factories.TINY_RESNET, seed=2), local)
    data = local.read_bytes()
    s3.put_object(Bucket=bucket, Key="models/tiny-resnet.pt", Body=data)
    url = f"s3://{bucket}/models/tiny-resnet.pt#sha256={hashlib.sha256(data).hexdigest()}"
    model, _ = clipkit.load(url, device="cpu", download_root=tmp_path / "cache",
                            storage_options={"endpoint_url": endpoint})
    reference, _ = clipkit.load(str(local), device="cpu")
    images = factories.sample_images(factories.TINY_RESNET)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reference.encode_image(images))
