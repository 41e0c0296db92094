"""Secrets in URLs stay secret, and failures that retrying cannot fix are not retried.

Against a real loopback server: a password in the URL's userinfo is sent as
``Authorization: Basic`` and never printed; a ``?token=`` query never reaches
an error message, a traceback, the progress bar, a cache file name or a cache
record. A host name that does not resolve, and 401/403/404, fail at once.
"""

from __future__ import annotations

import base64
import os
import traceback
from pathlib import Path

import pytest

import clipkit
from clipkit import fetching
from clipkit.errors import AccessDeniedError, ClipkitError, ConfigurationError, FetchError, SourceNotFoundError
from clipkit.fetching.redact import redact_url
from http_server import LoopbackServer, Status
from test_fetch_http import _fetch_env, server, sleeps  # noqa: F401 - the fetch tests' fixtures, shared

DATA = os.urandom(50_000)
PASSWORD = "pa55-w0rd-never-shown"
TOKEN = "tok-3f9a1c77e0d2-never-shown"


def _everything_written(root: Path) -> str:
    """Every file name and file text under ``root`` (cache entries, records, locks), as one string."""
    seen = []
    for path in root.rglob("*"):
        seen.append(path.name)
        if path.is_file() and path.stat().st_size < 1_000_000:
            seen.append(path.read_bytes().decode("latin1"))
    return "\n".join(seen)


def _shown(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(getattr(exc, "source", ""))


def test_userinfo_is_sent_as_basic_auth_and_never_recorded(server: LoopbackServer, tmp_path: Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    server.add("/w/tiny.pt", DATA)
    url = server.url("/w/tiny.pt").replace("http://", f"http://alice:{PASSWORD}@")
    path = fetching.fetch(url, cache_dir=tmp_path, progress=True)
    assert path.read_bytes() == DATA
    sent = server.log("/w/tiny.pt")[0].headers.get("Authorization")
    assert sent == "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert PASSWORD not in _everything_written(tmp_path)
    assert fetching.read_record(path).source.startswith("http://***@127.0.0.1")
    assert PASSWORD not in "".join(capfd.readouterr())


def test_a_password_never_appears_in_a_failure(server: LoopbackServer, tmp_path: Path, sleeps: list[float]) -> None:
    url = server.url("/missing.pt").replace("http://", f"http://bob:{PASSWORD}@")
    with pytest.raises(SourceNotFoundError) as info:
        fetching.fetch(url, cache_dir=tmp_path)
    assert PASSWORD not in _shown(info.value) and "***@127.0.0.1" in str(info.value)
    assert sleeps == []


@pytest.mark.parametrize("status, error", [(404, SourceNotFoundError), (401, AccessDeniedError),
                                           (403, AccessDeniedError)])
def test_a_query_token_never_appears_in_a_failure_and_is_not_retried(
        server: LoopbackServer, tmp_path: Path, sleeps: list[float], status: int, error: type[FetchError]) -> None:
    server.add(f"/q/tiny.pt?token={TOKEN}", DATA, status=status)
    with pytest.raises(error) as info:
        fetching.fetch(server.url(f"/q/tiny.pt?token={TOKEN}"), cache_dir=tmp_path)
    assert TOKEN not in _shown(info.value) and "token=***" in str(info.value)
    assert server.count(f"/q/tiny.pt?token={TOKEN}") == 1 and sleeps == []
    assert TOKEN not in _everything_written(tmp_path)


def test_signed_url_parameters_stay_out_of_the_cache_and_the_progress_bar(
        server: LoopbackServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    query = f"X-Amz-Credential=AKIA0000%2F20260101&X-Amz-Signature={TOKEN}&token={TOKEN[::-1]}"
    server.add(f"/s/tiny.pt?{query}", DATA)
    path = fetching.fetch(server.url(f"/s/tiny.pt?{query}"), cache_dir=tmp_path, progress=True)
    assert path.read_bytes() == DATA and path.name.startswith("tiny-") and "?" not in path.name
    written = _everything_written(tmp_path) + "".join(capfd.readouterr())
    assert TOKEN not in written and TOKEN[::-1] not in written and "AKIA0000" not in written


def test_load_through_the_pipeline_hides_the_token_too(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(f"/p/page.pt?token={TOKEN}", b"<html>not a checkpoint</html>")
    with pytest.raises(ClipkitError) as info:
        clipkit.load(server.url(f"/p/page.pt?token={TOKEN}"), device="cpu", download_root=tmp_path)
    assert TOKEN not in _shown(info.value)


def test_a_host_that_does_not_exist_fails_at_once(tmp_path: Path, sleeps: list[float]) -> None:
    with pytest.raises(FetchError, match="does not resolve") as info:
        fetching.fetch(f"http://user:{PASSWORD}@no-such-host.invalid/x.pt", cache_dir=tmp_path)
    assert sleeps == [] and PASSWORD not in _shown(info.value)


def test_a_transient_status_is_still_retried(server: LoopbackServer, tmp_path: Path, sleeps: list[float]) -> None:
    server.add(f"/t/tiny.pt?token={TOKEN}", DATA, faults=[Status(503)])
    assert fetching.fetch(server.url(f"/t/tiny.pt?token={TOKEN}"), cache_dir=tmp_path).read_bytes() == DATA
    assert len(sleeps) == 1


@pytest.mark.parametrize("url, shown", [
    ("https://u:p@host/a/b.pt?sig=abc&x=1#sha256=00", "https://***@host/a/b.pt?sig=***&x=***#sha256=00"),
    ("s3://KEY:SECRET@bucket/k.pt", "s3://***@bucket/k.pt"),
    ("simplecache::https://h/x.pt?token=t0k3n", "simplecache::https://h/x.pt?token=***"),
    ("/plain/local/path.pt", "/plain/local/path.pt"),
    ("https://h/x.pt#token=t0k3n&sha256=" + "ab" * 32, "https://h/x.pt#token=***&sha256=" + "ab" * 32),
    ("https://h/d;v=1/x.pt;token=t0k3n;b", "https://h/d;v=***/x.pt;token=***;***"),
])
def test_redaction_masks_userinfo_and_query_values(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("secret_part", [f"#token={TOKEN}", f";token={TOKEN}"])
def test_fragment_and_path_parameter_values_never_appear_anywhere(
        server: LoopbackServer, tmp_path: Path, sleeps: list[float], capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, secret_part: str) -> None:
    caplog.set_level("DEBUG")
    with pytest.raises(SourceNotFoundError) as info:
        fetching.fetch(server.url("/f/missing.pt") + secret_part, cache_dir=tmp_path, progress=True)
    assert "token=***" in str(info.value)
    shown = _shown(info.value) + _everything_written(tmp_path) + "".join(capfd.readouterr()) + caplog.text
    assert TOKEN not in shown
    assert any(p.name.startswith("missing-") and p.name.endswith(".pt.lock") for p in (tmp_path / ".clipkit").iterdir())


@pytest.mark.parametrize("url", [f"s3://AKIAEXAMPLE:{PASSWORD}@bucket/x.pt", f"ftp://user:{PASSWORD}@127.0.0.1:1/x.pt"])
def test_credentials_in_an_fsspec_url_are_refused_before_any_io(tmp_path: Path, url: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    with pytest.raises(ConfigurationError, match="storage_options") as info:
        fetching.fetch(url, cache_dir=tmp_path)
    assert PASSWORD not in _shown(info.value) + caplog.text and "AKIAEXAMPLE" not in str(info.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("url", ["ftp://anonymous@127.0.0.1:1/x.pt", "ftp://127.0.0.1:1/a@b/x.pt"])
def test_a_name_at_a_host_is_a_location_not_credentials(tmp_path: Path, url: str, sleeps: list[float]) -> None:
    # oci://bucket@namespace and abfs://container@account name a location with '@' and no secret:
    # they go on to the transport (here a refused connection), not to the credentials refusal
    with pytest.raises(FetchError, match="ConnectionRefusedError"):
        fetching.fetch(url, cache_dir=tmp_path)


def test_an_fsspec_connection_failure_is_reported_as_one(tmp_path: Path, sleeps: list[float]) -> None:
    with pytest.raises(FetchError, match="could not fetch ftp://127.0.0.1:1/x.pt: ConnectionRefusedError") as info:
        fetching.fetch("ftp://127.0.0.1:1/x.pt", cache_dir=tmp_path)
    assert "cache directory" not in str(info.value)


@pytest.mark.parametrize("endpoint", [f"http://user:{PASSWORD}@127.0.0.1:9", f"http://127.0.0.1:9/?token={TOKEN}"])
def test_an_hf_endpoint_with_credentials_is_refused_without_echoing_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, endpoint: str) -> None:
    pytest.importorskip("huggingface_hub")
    from clipkit.fetching.hub import fetch_hub

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    caplog.set_level("DEBUG")
    with pytest.raises(ConfigurationError, match="HF_TOKEN") as info:
        fetch_hub("hf-hub:org/repo")
    assert PASSWORD not in _shown(info.value) + caplog.text and TOKEN not in _shown(info.value) + caplog.text


def test_a_redirect_to_a_url_with_credentials_is_refused_naming_the_target(
        server: LoopbackServer, tmp_path: Path, sleeps: list[float]) -> None:
    target = server.url("/x.pt").replace("http://", f"http://u:{PASSWORD}@")
    server.add("/r/x.pt", DATA, faults=[Status(302, location=target)])
    with pytest.raises(FetchError, match=r"redirected to http://\*\*\*@127\.0\.0\.1.*credentials") as info:
        fetching.fetch(server.url("/r/x.pt"), cache_dir=tmp_path)
    assert PASSWORD not in _shown(info.value) and "does not resolve" not in str(info.value) and sleeps == []


def test_a_failure_after_a_redirect_names_the_target_redacted(server: LoopbackServer, tmp_path: Path) -> None:
    server.add("/r/y.pt", DATA, faults=[Status(302, location=server.url(f"/gone.pt?token={TOKEN}"))])
    with pytest.raises(SourceNotFoundError, match=r"redirected to .*/gone\.pt\?token=\*\*\*") as info:
        fetching.fetch(server.url("/r/y.pt"), cache_dir=tmp_path)
    assert TOKEN not in _shown(info.value)
