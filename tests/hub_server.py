"""A stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints ``huggingface_hub`` calls, over real HTTP.

Point ``HF_ENDPOINT`` at ``HubServer.endpoint`` and ``huggingface_hub`` (and so
clipkit's ``hf-hub:`` / ``hf://`` sources) talks to it as to huggingface.co::

    with HubServer() as hub:
        commit = hub.add_repo("timm/tiny.openai", {"open_clip_config.json": b"{...}",
                                                   "open_clip_model.safetensors": weights})
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        ...
        assert hub.count("/timm/tiny.openai/resolve/") == 2

Served, as the Hub serves them:

* ``GET /api/models/<repo>[/revision/<rev>]`` (``HfApi.model_info``, with the
  files' sizes, git blob ids and LFS SHA-256s, as with ``?blobs=true``);
* ``GET /api/models/<repo>/tree/<rev>`` (``HfApi.list_repo_tree``, one page);
* ``HEAD``/``GET /<repo>/resolve/<rev>/<file>``: a small (non-LFS) file is
  answered directly with ``ETag`` = its git blob id; an LFS file (weights: by
  suffix) with ``302`` to a separate CDN server (another origin, as
  ``cdn-lfs.hf.co`` is) carrying ``X-Linked-Etag`` (its SHA-256),
  ``X-Linked-Size`` and ``Location``. Every answer carries ``X-Repo-Commit``.
* Errors as the Hub's: 404 with ``X-Error-Code`` ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound``; 401 for a repo that requires a
  token when ``Authorization: Bearer <token>`` is missing or wrong.

No Xet headers are ever sent, so downloads use plain HTTP. ``corrupt(repo,
file)`` makes the CDN serve other bytes of the same length than the SHA-256
it advertises; ``fail_with(status)`` answers every request with ``status``
(a Hub that is down). Every request is logged (method, path, headers).
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from http_server import LoopbackServer

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx")


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob with this content: what the Hub reports as a small file's ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file committed in place of a large file (its id is the file's ``blobId``)."""
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass
class HubFile:
    """One file of one commit: its bytes and whether git-lfs stores it."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:
        return git_blob_id(lfs_pointer(self.data) if self.lfs else self.data)


@dataclass
class HubRepo:
    """A model repo: its commits (each a full listing of files) and its branches/tags."""

    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # required as "Authorization: Bearer <token>" when set


@dataclass
class HubRequest:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    # -- answers ---------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *,
              head: bool = False) -> None:
        self.record.status = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, commit: str | None = None, *, head: bool) -> None:
        headers = {"Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
            headers["X-Error-Message"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        body = json.dumps({"error": code or f"HTTP {status}"}).encode()
        self._send(status, body, headers, head=head)

    def _json(self, payload: Any, commit: str | None = None) -> None:
        headers = {"Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(200, json.dumps(payload).encode(), headers)

    # -- routing ---------------------------------------------------------------------

    def _handle(self, head: bool) -> None:
        hub = self.server.owner
        self.record = HubRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        hub._log(self.record)
        if hub.status is not None:
            self._error(hub.status, None, head=head)
            return
        path = urllib.parse.urlsplit(self.path).path
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            self._api(parts[2] + "/" + parts[3], parts[4:], head=head)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), head=head)
        else:
            self._error(404, None, head=head)

    def _repo(self, repo_id: str, head: bool) -> HubRepo | None:
        repo = self.server.owner.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", head=head)
            return None
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "RepoNotFound", head=head)
            return None
        return repo

    def _commit(self, repo: HubRepo, revision: str, head: bool) -> str | None:
        commit = repo.refs.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            self._error(404, "RevisionNotFound", head=head)
        return commit

    def _api(self, repo_id: str, rest: list[str], head: bool) -> None:
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        if not rest:
            rest = ["revision", "main"]
        if len(rest) < 2 or rest[0] not in ("revision", "tree"):
            self._error(404, None, head=head)
            return
        commit = self._commit(repo, rest[1], head)
        if commit is None:
            return
        files = repo.commits[commit]
        if rest[0] == "revision":
            siblings = []
            for name, item in sorted(files.items()):
                sibling: dict[str, Any] = {"rfilename": name, "size": len(item.data), "blobId": item.blob_id}
                if item.lfs:
                    sibling["lfs"] = {"sha256": item.sha256, "size": len(item.data),
                                      "pointerSize": len(lfs_pointer(item.data))}
                siblings.append(sibling)
            self._json({"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                        "siblings": siblings}, commit)
            return
        entries = []
        for name, item in sorted(files.items()):
            entry: dict[str, Any] = {"type": "file", "oid": item.blob_id, "size": len(item.data), "path": name}
            if item.lfs:
                entry["lfs"] = {"oid": item.sha256, "size": len(item.data),
                                "pointerSize": len(lfs_pointer(item.data))}
            entries.append(entry)
        self._json(entries, commit)

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        hub = self.server.owner
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        commit = self._commit(repo, revision, head)
        if commit is None:
            return
        item = repo.commits[commit].get(filename)
        if item is None:
            self._error(404, "EntryNotFound", commit, head=head)
            return
        if item.lfs:
            location = hub.cdn.url(f"/lfs/{item.sha256}/{urllib.parse.quote(filename)}")
            self._send(302, b"", {
                "Location": location,
                "X-Repo-Commit": commit,
                "ETag": f'"{item.blob_id}"',
                "X-Linked-Etag": f'"{item.sha256}"',
                "X-Linked-Size": str(len(item.data)),
            }, head=head)
            return
        self._send(200, item.data, {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit,
                                    "ETag": f'"{item.blob_id}"'}, head=head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: HubServer


class HubServer:
    """The Hub's API and resolve endpoints on one loopback port, LFS files on a second one (the CDN)."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[HubRequest] = []
        self.status: int | None = None
        self.cdn = LoopbackServer()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> HubServer:
        self.cdn.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.cdn.stop()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The value for ``HF_ENDPOINT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- content ----------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, revision: str = "main",
                 token: str | None = None) -> str:
        """Commit ``files`` (the whole tree) to ``repo_id`` and point ``revision`` at it; return the commit id.

        Files with a weights suffix are stored with git-lfs (their SHA-256 is
        advertised), the rest as plain git blobs. Calling it again for the same
        repo adds a commit (another revision, or ``main`` moved on).
        """
        items = {name: HubFile(data, name.endswith(LFS_SUFFIXES)) for name, data in files.items()}
        listing = "\n".join(f"{name} {item.blob_id}" for name, item in sorted(items.items()))
        commit = hashlib.sha1(f"{repo_id}\n{revision}\n{listing}".encode()).hexdigest()
        with self._lock:
            repo = self.repos.setdefault(repo_id, HubRepo())
            repo.commits[commit] = items
            repo.refs[revision] = commit
            if token is not None:
                repo.token = token
            for name, item in items.items():
                if item.lfs:
                    self.cdn.add(f"/lfs/{item.sha256}/{urllib.parse.quote(name)}", item.data)
        return commit

    def corrupt(self, repo_id: str, filename: str, revision: str = "main") -> None:
        """Make the CDN serve other bytes (same length) for this LFS file than the SHA-256 the Hub advertises."""
        repo = self.repos[repo_id]
        item = repo.commits[repo.refs.get(revision, revision)][filename]
        assert item.lfs, "only LFS files are served by the CDN"
        wrong = bytes([item.data[0] ^ 0xFF]) + item.data[1:]
        self.cdn.add(f"/lfs/{item.sha256}/{urllib.parse.quote(filename)}", wrong)

    def fail_with(self, status: int | None) -> None:
        """Answer every API and resolve request with ``status`` (``None``: serve normally again)."""
        self.status = status

    # -- bookkeeping ------------------------------------------------------------------

    def _log(self, record: HubRequest) -> None:
        with self._lock:
            self.requests.append(record)

    def log(self, contains: str = "", method: str | None = None) -> list[HubRequest]:
        """Requests to the Hub (not the CDN) whose path contains ``contains`` (and with ``method``), in order."""
        with self._lock:
            return [r for r in self.requests if contains in r.path and method in (None, r.method)]

    def count(self, contains: str = "", method: str | None = None) -> int:
        """How many Hub requests' paths contain ``contains``; the CDN's are ``self.cdn.count(...)``."""
        return len(self.log(contains, method))

    def downloads(self) -> list[str]:
        """The file names the CDN and the resolve endpoint sent bodies for (GETs), in order."""
        names = [urllib.parse.unquote(r.path.rsplit("/", 1)[-1]) for r in self.cdn.log() if r.status in (200, 206)]
        names += [urllib.parse.unquote(r.path.split("/resolve/", 1)[1].split("/", 1)[1])
                  for r in self.log("/resolve/", "GET") if r.status == 200]
        return names
