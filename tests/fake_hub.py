"""A Hugging Face Hub on localhost: the routes huggingface_hub uses to list and download a model.

    GET  /api/models/{owner}/{name}[/revision/{rev}]   listing: sha, siblings (size, lfs.sha256)
    HEAD /{owner}/{name}/resolve/{rev}/{path}           X-Repo-Commit, ETag, Content-Length
    GET  /{owner}/{name}/resolve/{rev}/{path}           the bytes; Range: bytes=N- gives a 206

Errors as the Hub sends them: 404 with X-Error-Code RepoNotFound, EntryNotFound or
RevisionNotFound (huggingface_hub.utils.hf_raise_for_status turns them into its errors).
Every request is recorded; faults can be set per file: drop the connection after half the
bytes (`drops`), or list a wrong sha256 (`wrong_sha`). A thread of the test process serves it.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class Repo:
    sha: str  # the commit every file belongs to
    files: dict[str, bytes | Path]
    digests: dict[str, str] = field(default_factory=dict)

    def size(self, name: str) -> int:
        data = self.files[name]
        return len(data) if isinstance(data, bytes) else data.stat().st_size

    def sha256(self, name: str) -> str:
        if name not in self.digests:
            data = self.files[name]
            h = hashlib.sha256()
            if isinstance(data, bytes):
                h.update(data)
            else:
                with open(data, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            self.digests[name] = h.hexdigest()
        return self.digests[name]

    def read(self, name: str, start: int) -> bytes | Path:
        data = self.files[name]
        return data[start:] if isinstance(data, bytes) else data


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.drops: dict[tuple[str, str], int] = {}  # (repo, file) -> connections still to drop
        self.wrong_sha: set[tuple[str, str]] = set()
        self.gated: set[str] = set()  # repositories that answer 403 GatedRepo (no accepted terms)
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, repo: str, files: dict[str, bytes | Path]) -> None:
        sha = hashlib.sha1(repo.encode()).hexdigest()
        self.repos[repo] = Repo(sha, files)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloads(self, method: str = "GET") -> list[Request]:
        """The file requests (not the listings) of that method."""
        return [r for r in self.requests if r.method == method and "/resolve/" in r.path]

    def clear(self) -> None:
        self.requests.clear()

    # --- routes ------------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append(Request(h.command, path, h.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self._listing(h, m.group(1), m.group(2), body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._file(h, m.group(1), m.group(2), m.group(3), body)
        self._error(h, 404, None)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None, commit: str | None = None) -> None:
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
            h.send_header("X-Error-Message", code)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _repo(self, h: BaseHTTPRequestHandler, name: str, rev: str | None) -> Repo | None:
        repo = self.repos.get(name)
        if repo is None:
            self._error(h, 404, "RepoNotFound")
            return None
        if name in self.gated:
            self._error(h, 403, "GatedRepo")
            return None
        if rev not in (None, "main", repo.sha):
            self._error(h, 404, "RevisionNotFound")
            return None
        return repo

    def _listing(self, h: BaseHTTPRequestHandler, name: str, rev: str | None, body: bool) -> None:
        repo = self._repo(h, name, rev)
        if repo is None:
            return
        siblings = []
        for f in sorted(repo.files):
            entry: dict[str, object] = {"rfilename": f, "size": repo.size(f)}
            if f.endswith((".gguf", ".safetensors")):
                sha = "0" * 64 if (name, f) in self.wrong_sha else repo.sha256(f)
                entry["lfs"] = {"sha256": sha, "size": repo.size(f), "pointerSize": 134}
            siblings.append(entry)
        data = json.dumps({"id": name, "modelId": name, "sha": repo.sha, "private": False,
                           "siblings": siblings}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _file(self, h: BaseHTTPRequestHandler, name: str, rev: str, path: str, body: bool) -> None:
        repo = self._repo(h, name, rev)
        if repo is None:
            return
        if path not in repo.files:
            return self._error(h, 404, "EntryNotFound", repo.sha)
        size = repo.size(path)
        start = 0
        rng = h.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            assert m, rng
            start = int(m.group(1))
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.sha)
        h.send_header("ETag", f'"{repo.sha256(path)}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(size - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        h.end_headers()
        if not body:
            return
        with self._lock:
            drop = self.drops.get((name, path), 0) > 0
            if drop:
                self.drops[(name, path)] -= 1
        stop = start + (size - start) // 2 if drop else size
        self._send(h, repo.read(path, start), start, stop)
        if drop:  # the connection breaks: the client has a part of the body
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, data: bytes | Path, start: int, stop: int) -> None:
        if isinstance(data, bytes):
            h.wfile.write(data[: stop - start])
            return
        with open(data, "rb") as f:
            f.seek(start)
            left = stop - start
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    break
                h.wfile.write(chunk)
                left -= len(chunk)
