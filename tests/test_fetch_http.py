"""Fetching over HTTP from a real server on 127.0.0.1: integrity, cache, retries, resumption, faults, offline."""

from __future__ import annotations

import email.utils
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipkit import fetching, releases
from clipkit.fetching import download, settings
from clipkit.errors import (
    AccessDeniedError,
    ChecksumError,
    ConfigurationError,
    FetchError,
    OfflineError,
    SourceNotFoundError,
)
from http_server import Corrupt, Drop, Hang, IgnoreRange, LoopbackServer, Stall, Status

DATA = os.urandom(300_000)
DIGEST = hashlib.sha256(DATA).hexdigest()
OTHER = hashlib.sha256(b"another file").hexdigest()
OFFICIAL = f"/clip/models/{DIGEST}/Tiny.pt"  # the release layout: the digest is the last directory
CACHED = f"Tiny-{DIGEST[:12]}.pt"  # where it is cached: only the nine official releases keep their bare name
PLAIN = "/files/tiny.pt"

FETCH_SCRIPT = """
import sys
from pathlib import Path
from clipkit import fetching
print(fetching.fetch(sys.argv[1], cache_dir=Path(sys.argv[2])), flush=True)
"""


@pytest.fixture(autouse=True)
def _fetch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLIPKIT_OFFLINE", "CLIPKIT_PROGRESS", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLIPKIT_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("CLIPKIT_RETRY_MAX_DELAY", "0.05")
    monkeypatch.setenv("CLIPKIT_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("CLIPKIT_MAX_RETRIES", "3")
    monkeypatch.setenv("no_proxy", "127.0.0.1")


@pytest.fixture
def server() -> LoopbackServer:
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def tiny_is_official(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``Tiny.pt`` with ``DIGEST`` stand in for an official release (the real files are hundreds of MB)."""
    monkeypatch.setattr(releases, "OFFICIAL_FILES", releases.OFFICIAL_FILES | {(DIGEST, "Tiny.pt")})


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays the fetcher asked for (it does not actually sleep)."""
    delays: list[float] = []
    monkeypatch.setattr(settings, "_sleep", delays.append)
    return delays


def _parts(cache: Path) -> list[str]:
    meta = cache / fetching.META_DIR
    return sorted(p.name for p in meta.glob("*" + fetching.PART_SUFFIX)) if meta.exists() else []


def _visible(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != fetching.META_DIR) if cache.exists() else []


# -- the happy path and the cache -----------------------------------------------------------------------


def test_download_is_verified_and_cached_under_the_reference_name(server: LoopbackServer, tmp_path: Path,
                                                                  tiny_is_official: None) -> None:
    server.add(OFFICIAL, DATA)
    path = fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path)
    assert path == tmp_path / "Tiny.pt"
    assert path.read_bytes() == DATA
    assert fetching.read_record(path).sha256 == DIGEST
    assert server.count(OFFICIAL) == 1
    assert server.log(OFFICIAL)[0].headers.get("Accept-Encoding") == "identity"
    assert _parts(tmp_path) == []


def test_cache_hit_makes_no_request(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA)
    first = fetching.fetch(server.url(PLAIN), cache_dir=tmp_path)
    for sha256 in (None, DIGEST):
        assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path, sha256=sha256) == first
    assert fetching.fetch(f"{server.url(PLAIN)}#sha256={DIGEST}", cache_dir=tmp_path) == first
    assert server.count() == 1


def test_existing_reference_download_is_adopted_without_a_request(server: LoopbackServer, tmp_path: Path,
                                                                  tiny_is_official: None) -> None:
    server.add(OFFICIAL, DATA)
    (tmp_path / "Tiny.pt").write_bytes(DATA)  # as openai/CLIP left it: no clipkit record
    assert fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path) == tmp_path / "Tiny.pt"
    assert server.count() == 0
    assert fetching.read_record(tmp_path / "Tiny.pt").sha256 == DIGEST


def test_truncated_reference_download_is_replaced(server: LoopbackServer, tmp_path: Path,
                                                  tiny_is_official: None) -> None:
    server.add(OFFICIAL, DATA)
    (tmp_path / "Tiny.pt").write_bytes(DATA[:1000])  # the reference writes in place: a broken run leaves this
    assert fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path).read_bytes() == DATA
    assert server.count() == 1


# -- digests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, sha256", [
    ("", "abc"),
    ("#sha256=0123", None),
    (f"#sha256={DIGEST}", OTHER),  # the argument and the fragment disagree
])
def test_bad_digest_is_refused_before_any_request(server: LoopbackServer, tmp_path: Path, suffix: str,
                                                  sha256: str | None) -> None:
    server.add(PLAIN, DATA)
    with pytest.raises(ConfigurationError):
        fetching.fetch(server.url(PLAIN) + suffix, cache_dir=tmp_path, sha256=sha256)
    assert server.requests == []
    assert _visible(tmp_path) == []


def test_explicit_digest_overrides_the_url_path(server: LoopbackServer, tmp_path: Path) -> None:
    mirror = f"/mirror/{OTHER}/Tiny.pt"  # a 64-hex directory that is not this file's digest
    server.add(mirror, DATA)
    with pytest.raises(ChecksumError) as info:
        fetching.fetch(server.url(mirror), cache_dir=tmp_path / "a")
    assert (info.value.expected, info.value.actual) == (OTHER, DIGEST)
    assert fetching.fetch(server.url(mirror), cache_dir=tmp_path / "b", sha256=DIGEST).read_bytes() == DATA
    assert fetching.fetch(f"{server.url(mirror)}#sha256={DIGEST}", cache_dir=tmp_path / "c").read_bytes() == DATA


def test_corrupted_body_raises_and_leaves_nothing(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(OFFICIAL, DATA, faults=[Corrupt()])
    with pytest.raises(ChecksumError) as info:
        fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path)
    error = info.value
    assert error.source == server.url(OFFICIAL) and error.expected == DIGEST and error.actual != DIGEST
    assert server.url(OFFICIAL) in str(error) and DIGEST in str(error) and error.actual in str(error)
    assert _visible(tmp_path) == [] and _parts(tmp_path) == []
    assert not fetching.record_path(tmp_path / CACHED).exists()
    assert fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path).read_bytes() == DATA  # next time is clean


# -- retries -------------------------------------------------------------------------------------------------


def test_transient_statuses_are_retried_with_growing_backoff(server: LoopbackServer, tmp_path: Path,
                                                             sleeps: list[float]) -> None:
    server.add(PLAIN, DATA, faults=[Status(500), Status(502), Status(408)])
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path).read_bytes() == DATA
    assert [r.status for r in server.log(PLAIN)] == [500, 502, 408, 200]
    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps, start=1):  # base 0.01 s doubled each time, jittered in [50%, 100%]
        assert 0.01 * 2 ** (n - 1) * 0.5 <= delay <= 0.01 * 2 ** (n - 1)


def test_retry_after_is_honoured_and_capped(server: LoopbackServer, tmp_path: Path, sleeps: list[float],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPKIT_RETRY_MAX_DELAY", "30")
    http_date = email.utils.formatdate(time.time() + 3600, usegmt=True)
    server.add(PLAIN, DATA, faults=[Status(503, retry_after=7), Status(429, retry_after=3600),
                                    Status(503, retry_after=http_date)])
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path).read_bytes() == DATA
    assert sleeps == [7.0, 30.0, 30.0]
    assert server.count(PLAIN) == 4


def test_retries_are_bounded(server: LoopbackServer, tmp_path: Path, sleeps: list[float]) -> None:
    server.add(PLAIN, DATA, status=503)
    with pytest.raises(FetchError, match="gave up after 4 failed attempts") as info:
        fetching.fetch(server.url(PLAIN), cache_dir=tmp_path)
    assert info.value.source == server.url(PLAIN) and server.url(PLAIN) in str(info.value)
    assert "503" in str(info.value)
    assert server.count(PLAIN) == 4  # CLIPKIT_MAX_RETRIES=3: one try and three retries
    assert _visible(tmp_path) == [] and _parts(tmp_path) == []


@pytest.mark.parametrize("status, error", [
    (404, SourceNotFoundError), (410, SourceNotFoundError), (401, AccessDeniedError), (403, AccessDeniedError),
    (400, FetchError),
])
def test_permanent_errors_are_not_retried(server: LoopbackServer, tmp_path: Path, sleeps: list[float],
                                          status: int, error: type[FetchError]) -> None:
    server.add(PLAIN, DATA, status=status)
    with pytest.raises(error, match=str(status)) as info:
        fetching.fetch(server.url(PLAIN), cache_dir=tmp_path)
    assert info.value.source == server.url(PLAIN) and server.url(PLAIN) in str(info.value)
    assert server.count(PLAIN) == 1 and sleeps == []


def test_unknown_path_is_source_not_found(server: LoopbackServer, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        fetching.fetch(server.url("/nothing/here.pt"), cache_dir=tmp_path)


def test_refused_connection_is_retried_then_reported(tmp_path: Path, sleeps: list[float]) -> None:
    with LoopbackServer() as gone:
        url = gone.url(PLAIN)
    with pytest.raises(FetchError, match="connection failed") as info:
        fetching.fetch(url, cache_dir=tmp_path)
    assert type(info.value) is FetchError and len(sleeps) == 3


# -- broken transfers --------------------------------------------------------------------------------------------


def test_dropped_connection_is_resumed_with_range(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA, faults=[Drop(after=100_000)])
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path, sha256=DIGEST).read_bytes() == DATA
    first, second = server.log(PLAIN)
    assert (first.status, first.sent, first.range) == (200, 100_000, None)
    assert (second.status, second.range, second.sent) == (206, "bytes=100000-", len(DATA) - 100_000)
    assert second.headers.get("If-Range") == server.resources[PLAIN].etag


def test_server_ignoring_range_restarts_cleanly(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA, faults=[Drop(after=100_000), IgnoreRange()])
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path, sha256=DIGEST).read_bytes() == DATA
    first, second = server.log(PLAIN)
    assert (second.range, second.status, second.sent) == ("bytes=100000-", 200, len(DATA))


def test_stalled_transfer_times_out_and_resumes(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA, faults=[Stall(after=120_000)])
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path, sha256=DIGEST).read_bytes() == DATA
    assert [(r.range, r.status) for r in server.log(PLAIN)] == [(None, 200), ("bytes=120000-", 206)]


def test_each_resumption_that_makes_progress_earns_fresh_retries(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA, faults=[Drop(after=40_000)] * 7)  # 7 breaks > CLIPKIT_MAX_RETRIES=3
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path, sha256=DIGEST).read_bytes() == DATA
    assert server.count(PLAIN) == 8


def test_breaking_at_the_same_place_without_range_is_given_up(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA, faults=[Drop(after=40_000)] * 10, ignore_range=True)
    with pytest.raises(FetchError, match="closed after 40000 of 300000 bytes"):
        fetching.fetch(server.url(PLAIN), cache_dir=tmp_path)
    assert server.count(PLAIN) == 4
    assert _visible(tmp_path) == [] and _parts(tmp_path) == []


def test_disk_full_leaves_nothing(server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.add(PLAIN, DATA)

    def full(self: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download.PartFile, "write", full)
    with pytest.raises(FetchError, match="no space left in the cache directory") as info:
        fetching.fetch(server.url(PLAIN), cache_dir=tmp_path)
    assert not isinstance(info.value, PermissionError)
    assert str(tmp_path) in str(info.value) and "download_root" in str(info.value)
    assert f"{len(DATA)} bytes" in str(info.value)  # the server said how big the file is
    assert info.value.source == server.url(PLAIN)
    assert _visible(tmp_path) == [] and _parts(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Path:
    """A 64 KiB tmpfs (a real full disk); skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_really_full_disk_is_a_fetch_error_and_leaves_nothing(server: LoopbackServer, small_tmpfs: Path) -> None:
    server.add(PLAIN, DATA)  # 300 kB into 64 KiB
    with pytest.raises(FetchError, match="no space left in the cache directory") as info:
        fetching.fetch(server.url(PLAIN), cache_dir=small_tmpfs)
    message = str(info.value)
    assert str(small_tmpfs) in message and f"{len(DATA)} bytes" in message and "download_root" in message
    assert _visible(small_tmpfs) == [] and _parts(small_tmpfs) == []
    # nothing is left taking up the space
    assert sum(p.stat().st_size for p in small_tmpfs.rglob("*") if p.is_file()) == 0


# -- cache slots, refreshing, forgetting -------------------------------------------------------------------------


def test_same_file_name_from_two_mirrors_is_downloaded_once_each(server: LoopbackServer, tmp_path: Path) -> None:
    other_data = os.urandom(50_000)
    other_digest = hashlib.sha256(other_data).hexdigest()
    one, two = f"/a/{DIGEST}/open_clip_model.pt", f"/b/{other_digest}/open_clip_model.pt"
    server.add(one, DATA)
    server.add(two, other_data)
    paths = [fetching.fetch(server.url(route), cache_dir=tmp_path) for route in (one, two, one, two)]
    assert (server.count(one), server.count(two)) == (1, 1)
    assert paths[0] == paths[2] != paths[1] == paths[3]
    assert paths[0].read_bytes() == DATA and paths[1].read_bytes() == other_data


def test_force_download_replaces_the_cached_copy_and_still_verifies(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA)
    cached = fetching.fetch(server.url(PLAIN), cache_dir=tmp_path)
    newer = os.urandom(10_000)
    server.add(PLAIN, newer)  # the server now has another file at the same URL
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path).read_bytes() == DATA  # the cache answers
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path, force_download=True) == cached
    assert cached.read_bytes() == newer and fetching.read_record(cached).sha256 == hashlib.sha256(newer).hexdigest()
    assert server.count(PLAIN) == 2 and _parts(tmp_path) == []
    # with a digest, a forced download that does not verify leaves the good copy in place
    server.add(OFFICIAL, DATA)
    good = fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path)
    server.add(OFFICIAL, DATA, faults=[Corrupt()])
    with pytest.raises(ChecksumError):
        fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path, force_download=True)
    assert good.read_bytes() == DATA and fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path) == good
    assert server.count(OFFICIAL) == 2 and _parts(tmp_path) == []


def test_forget_discards_a_bad_download_so_it_is_fetched_again(server: LoopbackServer, tmp_path: Path) -> None:
    page = b"<html><body>Sign in to continue</body></html>"  # an error page served with status 200
    server.add(PLAIN, page)
    cached = fetching.fetch(server.url(PLAIN), cache_dir=tmp_path)
    assert cached.read_bytes() == page
    leftover = tmp_path / fetching.META_DIR / f"{cached.name}.0123456789ab{fetching.PART_SUFFIX}"
    leftover.write_bytes(b"half")
    fetching.forget(cached)
    assert not cached.exists() and not fetching.record_path(cached).exists() and not leftover.exists()
    fetching.forget(cached)  # forgetting twice is fine
    server.add(PLAIN, DATA)
    assert fetching.fetch(server.url(PLAIN), cache_dir=tmp_path).read_bytes() == DATA
    assert server.count(PLAIN) == 2
    mine = tmp_path / "mine.pt"  # a file clipkit never cached (served in place) is left alone
    mine.write_bytes(DATA)
    fetching.forget(mine)
    assert mine.read_bytes() == DATA


# -- caches clipkit cannot write to --------------------------------------------------------------------------------

CAPS = "dac_override,dac_read_search"  # what lets root ignore file permissions

FETCH_MANY_SCRIPT = """
import json, sys
from pathlib import Path
from clipkit import fetching
for item in json.loads(sys.argv[1]):
    try:
        path = fetching.fetch(item["url"], cache_dir=Path(item["cache"]), sha256=item.get("sha256"),
                              **({"force_download": True} if item.get("force") else {}))
        result = {"path": str(path)}
    except BaseException as exc:
        result = {"error": type(exc).__name__, "message": str(exc), "mro": [c.__name__ for c in type(exc).__mro__]}
    print(json.dumps(result), flush=True)
"""


def _unprivileged_prefix(tmp_path: Path) -> list[str]:
    """A command prefix under which file permissions bind (as root: without CAP_DAC_OVERRIDE); else skip."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot run without root's permission override")
    prefix = ["setpriv", f"--inh-caps=-{CAPS.replace(',', ',-')}", f"--bounding-set=-{CAPS.replace(',', ',-')}"]
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    probe.chmod(0o555)
    done = subprocess.run([*prefix, sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"], capture_output=True)
    if done.returncode == 0 or b"PermissionError" not in done.stderr:
        pytest.skip(f"cannot drop root's permission override here: {done.stderr.decode(errors='replace')[-300:]}")
    probe.rmdir()
    return prefix


def _fetch_many(prefix: list[str], items: list[dict[str, object]], **env: str) -> list[dict[str, object]]:
    environment = {k: v for k, v in os.environ.items() if k != "CLIPKIT_OFFLINE"} | env
    done = subprocess.run([*prefix, sys.executable, "-c", FETCH_MANY_SCRIPT, json.dumps(items)], capture_output=True,
                          text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_read_only_cache_serves_what_it_holds(server: LoopbackServer, tmp_path: Path) -> None:
    prefix = _unprivileged_prefix(tmp_path)
    wrong = f"/clip/models/{OTHER}/other.pt"
    for route in (OFFICIAL, PLAIN, wrong, "/files/absent.pt"):
        server.add(route, DATA)
    shared = tmp_path / "shared"  # filled by someone else (or by the reference): no .clipkit records
    shared.mkdir()
    (shared / CACHED).write_bytes(DATA)
    fetching.cache_path(server.url(PLAIN), shared).write_bytes(DATA)
    fetching.cache_path(server.url(wrong), shared).write_bytes(DATA)  # not what that URL's digest says
    items = [
        {"cache": str(shared), "url": server.url(OFFICIAL)},  # hashed against the digest in the URL
        {"cache": str(shared), "url": server.url(PLAIN), "sha256": DIGEST},  # against the given digest
        {"cache": str(shared), "url": server.url(PLAIN)},  # no digest: served as it is
        {"cache": str(shared), "url": server.url(wrong)},
        {"cache": str(shared), "url": server.url("/files/absent.pt")},
        {"cache": str(shared), "url": server.url(OFFICIAL), "force": True},
    ]
    shared.chmod(0o555)
    try:
        online = _fetch_many(prefix, items)
        (shared / fetching.META_DIR).mkdir(mode=0o555)  # .clipkit there but not writable: no lock can be had
        (shared / fetching.META_DIR).chmod(0o555)
        offline = _fetch_many(prefix, items, CLIPKIT_OFFLINE="1")
    finally:
        shared.chmod(0o755)
    for results, absent_error in ((online, "ConfigurationError"), (offline, "OfflineError")):
        assert results[0] == {"path": str(shared / CACHED)}, results[0]
        assert results[1] == results[2] == {"path": str(fetching.cache_path(server.url(PLAIN), shared))}
        assert results[3]["error"] == "ChecksumError" and OTHER in results[3]["message"], results[3]
        assert "not writable" in results[3]["message"]
        assert results[4]["error"] == absent_error, results[4]
        assert str(shared) in results[4]["message"] or "CLIPKIT_OFFLINE" in results[4]["message"]
        assert results[5]["error"] in ("ConfigurationError", "OfflineError"), results[5]
    assert "not writable" in online[4]["message"] and "download_root" in online[4]["message"]
    assert "not writable" in online[5]["message"]
    assert server.count() == 0  # nothing was downloaded, nothing was even asked
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        [CACHED, fetching.META_DIR, fetching.cache_path(server.url(PLAIN), shared).name,
         fetching.cache_path(server.url(wrong), shared).name])
    assert list((shared / fetching.META_DIR).iterdir()) == []  # no record, no lock, no part file


def test_unwritable_cache_errors_are_typed_and_leave_nothing(server: LoopbackServer, tmp_path: Path) -> None:
    prefix = _unprivileged_prefix(tmp_path)
    server.add(PLAIN, DATA)
    # .clipkit/ not writable, but its lock file is: the lock is had, the temporary file cannot be created
    no_parts = tmp_path / "no-parts"
    (no_parts / fetching.META_DIR).mkdir(parents=True)
    fetching.lock_path(fetching.cache_path(server.url(PLAIN), no_parts)).touch(mode=0o666)
    # .clipkit/ writable, the cache directory itself not: the download cannot be moved into place
    no_rename = tmp_path / "no-rename"
    (no_rename / fetching.META_DIR).mkdir(parents=True)
    items = [{"cache": str(no_parts), "url": server.url(PLAIN)}, {"cache": str(no_rename), "url": server.url(PLAIN)}]
    (no_parts / fetching.META_DIR).chmod(0o555)
    no_rename.chmod(0o555)
    (no_rename / fetching.META_DIR).chmod(0o777)
    try:
        results = _fetch_many(prefix, items)
    finally:
        (no_parts / fetching.META_DIR).chmod(0o755)
        no_rename.chmod(0o755)
    for result, cache in zip(results, (no_parts, no_rename)):
        assert result.get("error") == "ConfigurationError", result
        assert "PermissionError" not in result["mro"]
        assert "is not writable" in result["message"] and str(cache) in result["message"]
        assert "download_root" in result["message"] and "CLIPKIT_CACHE" in result["message"]
        assert _visible(cache) == [] and _parts(cache) == []
    assert server.count(PLAIN) == 1  # the first never asked; the second downloaded, then could not keep it


def _start_downloader(url: str, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, url, str(cache)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_interrupted_download_leaves_nothing_trusted(server: LoopbackServer, tmp_path: Path,
                                                     how: signal.Signals) -> None:
    resource = server.add(OFFICIAL, DATA, faults=[Hang(after=150_000)])
    child = _start_downloader(server.url(OFFICIAL), tmp_path)
    try:
        assert resource.reached.wait(60), child.communicate(timeout=5)
        time.sleep(0.2)  # let the child write what it received
        child.send_signal(how)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0
    assert _visible(tmp_path) == []  # no file at the target path
    leftovers = _parts(tmp_path)
    if how == signal.SIGINT:
        assert leftovers == []  # KeyboardInterrupt cleans up after itself
    else:
        assert len(leftovers) == 1  # a kill cannot; the part file is never trusted
    path = fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path)
    assert path.read_bytes() == DATA and _parts(tmp_path) == []


# -- offline, options, progress -------------------------------------------------------------------------------------


def test_offline_never_touches_the_network(server: LoopbackServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    server.add(OFFICIAL, DATA)
    server.add(PLAIN, DATA)
    cached = fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path)
    monkeypatch.setenv("CLIPKIT_OFFLINE", "1")
    assert fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path) == cached
    with pytest.raises(OfflineError, match="not in the cache") as info:
        fetching.fetch(server.url(PLAIN), cache_dir=tmp_path)
    assert info.value.source == server.url(PLAIN)
    assert server.count() == 1


def test_headers_are_sent_and_unknown_options_refused(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA)
    with pytest.raises(ConfigurationError, match="anon"):
        fetching.fetch(server.url(PLAIN), cache_dir=tmp_path, storage_options={"anon": True})
    assert server.requests == []
    fetching.fetch(server.url(PLAIN), cache_dir=tmp_path, storage_options={"headers": {"Authorization": "Bearer t"}})
    assert server.log(PLAIN)[0].headers.get("Authorization") == "Bearer t"


def test_progress_bar_shows_size_and_rate(server: LoopbackServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    server.add(OFFICIAL, DATA)
    fetching.fetch(server.url(OFFICIAL), cache_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "Tiny-" in err and "293k" in err and "B/s" in err


# -- end to end: clipkit.load over HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, str]:
    import factories

    path = tmp_path_factory.mktemp("checkpoint") / "tiny-vit.pt"
    factories.save_state_dict(factories.make_state_dict(factories.TINY_VIT, seed=1), path)
    data = path.read_bytes()
    return path, data, hashlib.sha256(data).hexdigest()


def _image_features(model: object) -> object:
    import factories
    import torch

    with torch.no_grad():
        return model.encode_image(factories.sample_images(factories.TINY_VIT))


def test_load_from_an_http_url(server: LoopbackServer, tmp_path: Path, tiny_checkpoint: tuple[Path, bytes, str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import clipkit
    import torch

    local, data, digest = tiny_checkpoint
    route = f"/clip/models/{digest}/tiny-vit.pt"
    server.add(route, data, faults=[Status(503, retry_after=0), Drop(after=len(data) // 3)])
    model, preprocess = clipkit.load(server.url(route), device="cpu", download_root=tmp_path)
    assert fetching.cache_path(server.url(route), tmp_path).read_bytes() == data
    reference, _ = clipkit.load(str(local), device="cpu")
    assert torch.equal(_image_features(model), _image_features(reference))
    assert server.count(route) == 3  # a 503, a broken transfer, a resumed one
    monkeypatch.setenv("CLIPKIT_OFFLINE", "1")
    again, _ = clipkit.load(server.url(route), device="cpu", download_root=tmp_path)
    assert torch.equal(_image_features(again), _image_features(reference))
    assert server.count(route) == 3


def test_load_with_a_wrong_digest_caches_nothing(server: LoopbackServer, tmp_path: Path,
                                                 tiny_checkpoint: tuple[Path, bytes, str]) -> None:
    import clipkit

    _, data, digest = tiny_checkpoint
    server.add(PLAIN, data)
    with pytest.raises(ChecksumError) as info:
        clipkit.load(server.url(PLAIN), device="cpu", download_root=tmp_path, sha256=OTHER)
    assert (info.value.expected, info.value.actual) == (OTHER, digest)
    assert _visible(tmp_path) == [] and _parts(tmp_path) == []
    with pytest.raises(ConfigurationError):
        clipkit.load(server.url(PLAIN), device="cpu", download_root=tmp_path, sha256="not-a-digest")
    assert server.count(PLAIN) == 1


def test_registered_name_resolves_to_its_url_and_digest(server: LoopbackServer, tmp_path: Path, registry: object,
                                                         tiny_checkpoint: tuple[Path, bytes, str]) -> None:
    import clipkit

    _, data, digest = tiny_checkpoint
    route = f"/mirror/{digest}/tiny-vit.pt"
    server.add(route, data)

    class TinyModels:
        @clipkit.hookimpl
        def register_models(self) -> dict[str, clipkit.ModelSource]:
            return {"tiny-test": clipkit.ModelSource(url=server.url(route), sha256=digest)}

    registry.register(TinyModels(), name="tiny-models")
    model, _ = clipkit.load("tiny-test", device="cpu", download_root=tmp_path)
    assert model.visual.input_resolution == 32
    assert fetching.cache_path(server.url(route), tmp_path).read_bytes() == data and server.count(route) == 1


# -- the command line -------------------------------------------------------------------------------------------------


def _clipkit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clipkit", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_clipkit_fetch_prints_the_cached_path(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(OFFICIAL, DATA)
    env = {k: v for k, v in os.environ.items() if k != "CLIPKIT_OFFLINE"}
    done = _clipkit("fetch", server.url(OFFICIAL), "--download-root", str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / CACHED)
    assert done.stderr == ""  # no terminal, no progress bar
    assert (tmp_path / CACHED).read_bytes() == DATA
    assert server.count(OFFICIAL) == 1


def test_clipkit_fetch_reports_errors_in_one_line(server: LoopbackServer, tmp_path: Path) -> None:
    server.add(PLAIN, DATA)
    env = dict(os.environ)
    done = _clipkit("fetch", server.url(PLAIN), "--sha256", OTHER, "--download-root", str(tmp_path), env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("clipkit: error: SHA-256 mismatch") and OTHER in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _visible(tmp_path) == []
