"""A loopback HTTP/1.1 server that plays a sidecar (llama-server, vLLM) in tests: SSE bodies written as
chunks, piece by piece, the way a sidecar streams its tokens."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO


class LoopbackSidecar(ThreadingHTTPServer):
    """Listens on a free loopback port; subclasses keep what their handler records."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Serve in a thread until the block ends; then stop and close the socket."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            self.shutdown()
            self.server_close()


def start_event_stream(handler: BaseHTTPRequestHandler) -> None:
    """A 200 whose SSE body follows in chunks (write_chunk, then END)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def write_chunk(out: BinaryIO, piece: bytes) -> None:
    """One chunk of a chunked body, sent now."""
    out.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    out.flush()


END = b"0\r\n\r\n"
"""The last chunk of a chunked body."""
