"""Streamed POSTs to a sidecar over the standard library's http.client, with kept-alive connections.

A sidecar sends one SSE event per token, so the reader wakes once per token: through httpx (httpcore,
h11, its decoders and line splitter) each wake-up cost about twice the CPU it costs here, where one
`read1` takes what the socket holds and the lines are split in one pass. The CPU saved is taken from the
engine on a small box, where both share the cores. Non-streamed calls stay on httpx.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from services.common.errors import APIError
from services.worker.engines.upstream import error_from_raw, error_from_socket

READ_SIZE = 65536
CONNECT_TIMEOUT = 5.0
DONE_LINE = "data: [DONE]"


class SSEClient:
    """Opens streamed POSTs to one base URL; a connection whose stream was read to its end is kept for the next."""

    def __init__(self, base_url: str, *, upstream: str, timeout: float, keep: int) -> None:
        parts = urlsplit(base_url)
        self.upstream = upstream
        self.base_url = base_url
        self.timeout = timeout
        self.keep = keep
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lines(self, path: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> Iterator[Iterator[str]]:
        """The response's lines; leaving the block early closes the connection, which cancels upstream."""
        payload = json.dumps(body).encode()
        head = {"Content-Type": "application/json", "Accept": "text/event-stream", **headers}
        conn, response = self._send(self._prefix + path, payload, head)
        reader = _Lines(response)
        try:
            if response.status >= 400:
                raise self._error(response)
            yield reader.lines()
        except OSError as exc:
            raise self._transport_error(exc) from exc
        finally:
            reader.drain()
            if reader.complete and not response.will_close:
                self._put(conn)
            else:
                conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _send(
        self, path: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sent on a kept connection, or on a new one if that was closed by the sidecar meanwhile (it had
        not read the request, so sending it again runs it once)."""
        while True:
            conn, reused = self._take()
            try:
                conn.request("POST", path, body=payload, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if not reused:
                    raise self._transport_error(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise self._transport_error(exc) from exc

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = kind(self._host, self._port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except OSError as exc:
            raise self._transport_error(exc) from exc
        conn.sock.settimeout(self.timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(conn)
                return
        conn.close()

    def _error(self, response: http.client.HTTPResponse) -> APIError:
        return error_from_raw(response.status, response.read(), self.upstream)

    def _transport_error(self, exc: OSError | http.client.HTTPException) -> APIError:
        return error_from_socket(exc, self.upstream, self.base_url)


class _Lines:
    """A response body split into text lines (without their line ends), whatever the chunking."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.response = response
        self.complete = False
        self.done = False
        """`data: [DONE]` was read: the rest of the body is its end, so reading it keeps the connection."""

    def drain(self) -> None:
        if self.done and not self.complete:
            with contextlib.suppress(OSError, http.client.HTTPException):
                self.response.read()
                self.complete = True

    def lines(self) -> Iterator[str]:
        rest = b""
        while True:
            try:
                data = self.response.read1(READ_SIZE)
            except http.client.HTTPException as exc:  # a cut chunked body: IncompleteRead
                raise ConnectionResetError(f"the stream broke off: {exc!r}") from exc
            if not data:
                self.complete = True
                if rest:
                    yield rest.decode(errors="replace").rstrip("\r")
                return
            parts = (rest + data).split(b"\n")
            rest = parts.pop()
            for part in parts:
                line = part.decode(errors="replace").rstrip("\r")
                if line == DONE_LINE:
                    self.done = True
                yield line
