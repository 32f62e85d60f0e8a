"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the real huggingface_hub client (HF_ENDPOINT).

It answers the requests huggingface_hub 2.x makes, with the headers it reads (from its file_download.py and
hf_api.py): GET /api/models/{repo}[/revision/{rev}] with `sha` and `siblings` (`blobs=True`: size, blobId, lfs
sha256), HEAD/GET /{repo}/resolve/{rev}/{file} with X-Repo-Commit, ETag (an LFS file's SHA-256), X-Linked-Size,
X-Linked-Etag, Content-Length and byte ranges (206 + Content-Range) for resumed downloads. Errors carry the
X-Error-Code the client maps to its exceptions: GatedRepo (401), RepoNotFound, EntryNotFound (404).

A repo can be gated (a Bearer token needed), list a wrong SHA-256 for a file, or cut a file's first download
after some bytes (the connection closed mid-body, as a network drop does). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_OVER = 10_000  # files from this size on are LFS files, as the hub stores weights


@dataclass
class HubRepo:
    files: dict[str, Path | bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    listed_sha256: dict[str, str] = field(default_factory=dict)  # a file name -> the (wrong) hash to list
    cut_after: dict[str, int] = field(default_factory=dict)  # a file name -> bytes sent before the first cut


def _content(data: Path | bytes) -> bytes:
    return data.read_bytes() if isinstance(data, Path) else data


class FakeHub:
    def __init__(self, repos: dict[str, HubRepo], token: str = "hf_standin_token") -> None:
        self.repos = repos
        self.token = token
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._digests: dict[tuple[str, str], tuple[str, str, int]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def digests(self, repo: str, name: str) -> tuple[str, str, int]:
        """(sha256, git blob id, size) of a served file, computed once."""
        key = (repo, name)
        if key not in self._digests:
            data = self.repos[repo].files[name]
            sha, size = hashlib.sha256(), 0
            git = hashlib.sha1(usedforsecurity=False)
            body = _content(data)
            size = len(body)
            sha.update(body)
            git.update(f"blob {size}\0".encode() + body)
            self._digests[key] = (sha.hexdigest(), git.hexdigest(), size)
        return self._digests[key]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _repo(self, repo_id: str) -> HubRepo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(401, "RepoNotFound", "Repository not found")
                    return None
                if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
                    return None
                return repo

            def do_HEAD(self) -> None:
                self._serve()

            def do_GET(self) -> None:
                self._serve()

            def _serve(self) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                if path.startswith("/api/models/"):
                    return self._info(path.removeprefix("/api/models/"))
                if "/resolve/" in path:
                    return self._resolve(path)
                self._error(404, "NotFound", "no such route")

            def _info(self, rest: str) -> None:
                repo_id, _, _revision = rest.partition("/revision/")
                repo = self._repo(repo_id)
                if repo is None:
                    return
                siblings = []
                for name in repo.files:
                    sha, blob, size = hub.digests(repo_id, name)
                    entry: dict[str, object] = {"rfilename": name, "size": size, "blobId": blob}
                    if size >= LFS_OVER:
                        listed = repo.listed_sha256.get(name, sha)
                        entry["lfs"] = {"size": size, "sha256": listed, "pointerSize": 134}
                    siblings.append(entry)
                body = json.dumps(
                    {
                        "_id": "x",
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": repo.commit,
                        "private": False,
                        "gated": "manual" if repo.gated else False,
                        "siblings": siblings,
                        "tags": ["gguf"],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _resolve(self, path: str) -> None:
                repo_id, _, rest = path.lstrip("/").partition("/resolve/")
                _revision, _, name = rest.partition("/")
                repo = self._repo(repo_id)
                if repo is None:
                    return
                if name not in repo.files:
                    return self._error(404, "EntryNotFound", f"{name} does not exist", commit=repo.commit)
                sha, blob, size = hub.digests(repo_id, name)
                lfs = size >= LFS_OVER
                etag = repo.listed_sha256.get(name, sha) if lfs else blob
                start = 0
                wanted = self.headers.get("Range")
                if wanted and wanted.startswith("bytes="):
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", repo.commit)
                self.send_header("ETag", f'"{etag}"')
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(size))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(size - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                body = _content(repo.files[name])[start:]
                cut = repo.cut_after.pop(name, None)
                if cut is not None:  # a dropped connection: part of the body, then the socket closes
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler
