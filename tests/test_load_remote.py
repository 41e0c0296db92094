"""clipkit.load from a real loopback HTTP server: what the loader does with what a server gives it."""

from __future__ import annotations

import factories
import pytest

import clipkit
from clipkit.errors import CheckpointError
from http_server import LoopbackServer


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("CLIPKIT_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("CLIPKIT_PROGRESS", "0")


def test_an_error_page_served_with_200_is_not_cached_forever(tmp_path):
    """A URL without a digest that answers HTML is dropped from the cache, so a fixed server is read next time."""
    good = tmp_path / "good.pt"
    factories.write_checkpoint(good, factories.TINY_VIT)
    cache = tmp_path / "cache"
    with LoopbackServer() as server:
        server.add("/models/model.pt", b"<!DOCTYPE html><html><body>Please log in</body></html>")
        url = server.url("/models/model.pt")
        with pytest.raises(CheckpointError, match="removed from the cache"):
            clipkit.load(url, device="cpu", download_root=cache)
        server.add("/models/model.pt", good.read_bytes())
        model, _ = clipkit.load(url, device="cpu", download_root=cache)
        assert model.visual.input_resolution == factories.TINY_VIT.image_resolution
        assert server.count("/models/model.pt") == 2


def test_a_digest_vouched_download_is_kept_even_when_it_is_not_a_checkpoint(tmp_path):
    """With a digest the bytes are the publisher's: they stay cached and the error says what the file is."""
    import hashlib

    body = b"<!DOCTYPE html><html>not weights</html>"
    cache = tmp_path / "cache"
    with LoopbackServer() as server:
        server.add("/m.pt", body)
        url = server.url("/m.pt")
        digest = hashlib.sha256(body).hexdigest()
        for _ in range(2):
            with pytest.raises(CheckpointError, match="not a checkpoint") as info:
                clipkit.load(url, device="cpu", download_root=cache, sha256=digest)
            assert "removed from the cache" not in str(info.value)
        assert server.count("/m.pt") == 1


def test_clipkit_fetch_force_downloads_again(tmp_path):
    import subprocess
    import sys

    good = tmp_path / "good.pt"
    factories.write_checkpoint(good, factories.TINY_VIT)
    cache = tmp_path / "cache"
    with LoopbackServer() as server:
        server.add("/w.pt", good.read_bytes())
        url = server.url("/w.pt")
        command = [sys.executable, "-m", "clipkit", "fetch", url, "--download-root", str(cache), "--quiet"]
        first = subprocess.run(command, capture_output=True, text=True, timeout=120)
        again = subprocess.run(command, capture_output=True, text=True, timeout=120)
        forced = subprocess.run([*command, "--force"], capture_output=True, text=True, timeout=120)
        assert first.returncode == again.returncode == forced.returncode == 0, forced.stderr
        assert first.stdout == again.stdout == forced.stdout
        assert server.count("/w.pt") == 2
