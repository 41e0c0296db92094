"""The Ray engine on a local Ray instance, reading photos from a loopback S3 server: the local engine's table, exactly."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import batch_fixtures as bf
import factories
import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("s3fs")
ray = pytest.importorskip("ray")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from clipkit import batch  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::clipkit.errors.AssumptionWarning")]
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
PHOTOS = 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bucket_url(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 holding 240 photos and one broken file under ``photos/``."""
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("AWS_")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true",
                      AWS_CONFIG_FILE=str(tmp_path_factory.mktemp("aws") / "none"))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS)
    name = f"clipkit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda file: s3.put_object(Bucket=name, Key=f"photos/{file[0]}", Body=file[1]),
                      bf.photo_bytes(PHOTOS) + bf.broken_files()[:1]))
    yield f"s3://{name}/photos/", {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    server.stop()
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_from_s3_equals_the_local_engine(bucket_url, local_ray, tmp_path):
    url, storage_options = bucket_url
    checkpoint = tmp_path / "tiny-vit.pt"
    factories.write_checkpoint(checkpoint, bf.TINY_FULL_VOCAB)
    common = dict(model=checkpoint, storage_options=storage_options, device="cpu", batch_size=32, shard_size=100,
                  progress=False)
    local = batch.embed_images(url, tmp_path / "local", workers=1, **common)
    remote = batch.embed_images(url, tmp_path / "ray", engine="ray", actors=1, **common)
    assert remote.written == (0, 1, 2) and local.written == (0, 1, 2)
    a, b = local.read(), remote.read()
    assert a.num_rows == b.num_rows == PHOTOS + 1 and a.schema == b.schema
    for column in ("index", "id", "error"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist()
    assert b.column("id")[0].as_py().startswith(url) and b.column("error").null_count == PHOTOS
    errors = {row["id"].rsplit("/", 1)[1]: row["error"] for row in b.to_pylist() if row["error"]}
    assert list(errors) == ["broken-truncated.jpg"] and errors["broken-truncated.jpg"].startswith("OSError: image")
    np.testing.assert_allclose(bf.embedding_matrix(b), bf.embedding_matrix(a), rtol=0, atol=2e-6)


def test_two_actors_fetch_the_weights_once_per_node(local_ray, tmp_path):
    """Captions need no transform, so the driver never reads the model: both actors fetch it, one downloads."""
    from http_server import LoopbackServer

    checkpoint = tmp_path / "tiny-vit.pt"
    factories.write_checkpoint(checkpoint, bf.TINY_FULL_VOCAB)
    captions = [f"a photo of thing number {n}" for n in range(48)]
    with LoopbackServer() as server:
        server.add("/models/tiny-vit.pt", checkpoint.read_bytes())
        url = server.url("/models/tiny-vit.pt")
        common = dict(device="cpu", batch_size=8, progress=False, download_root=str(tmp_path / "cache"))
        remote = batch.embed_texts(captions, tmp_path / "ray", model=url, engine="ray", actors=2, **common)
        assert server.count("/models/tiny-vit.pt") == 1
    local = batch.embed_texts(captions, tmp_path / "local", model=url, **common)  # served from the cache now
    a, b = local.read(), remote.read()
    assert a.schema == b.schema and a.column("text").to_pylist() == b.column("text").to_pylist() == captions
    np.testing.assert_allclose(bf.embedding_matrix(b), bf.embedding_matrix(a), rtol=0, atol=2e-6)
