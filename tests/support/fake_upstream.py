"""Stand-in API replicas for testing nginx alone: a slow SSE streamer, and one that dies mid-request."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeReplica(ThreadingHTTPServer):
    """Answers like an API replica and records what it saw (request ids, bodies)."""

    daemon_threads = True

    def __init__(self, name: str, chunks: int = 5, gap: float = 0.4) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name, self.chunks, self.gap = name, chunks, gap
        self.seen: list[dict] = []
        self.lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeReplica

    def log_message(self, *args: object) -> None:
        return

    def _record(self, body: bytes) -> None:
        with self.server.lock:
            self.server.seen.append(
                {"method": self.command, "path": self.path, "request_id": self.headers.get("X-Request-ID"),
                 "body": body.decode()}
            )  # fmt: skip

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Replica", self.server.name)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record(b"")
        self._json(200, {"object": "list", "data": [], "replica": self.server.name})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._record(body)
        if self.path != "/stream":
            self._json(200, {"replica": self.server.name})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(self.server.chunks):
            event = f"data: {json.dumps({'i': i})}\n\n".encode()
            self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            self.wfile.flush()
            time.sleep(self.server.gap)
        self.wfile.write(b"0\r\n\r\n")


class CrashingReplica:
    """Accepts a connection, reads the request, then closes without answering: a replica dying mid-request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by close()
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    if conn.recv(65536):
                        self.requests += 1

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def serving(replica: FakeReplica) -> Iterator[FakeReplica]:
    thread = threading.Thread(target=replica.serve_forever, daemon=True)
    thread.start()
    try:
        yield replica
    finally:
        replica.shutdown()
        replica.server_close()


def dead_address() -> str:
    """An address where nothing listens: a replica that is down (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"
