"""Streamed POSTs to a sidecar over our own sockets (h11 parses HTTP/1.1), kept alive, read in ticks.

A sidecar sends one SSE event per token. Read as they come, every token wakes the slot's thread, and
through the flusher another thread and a Redis write: on a small box that CPU is taken from the
engine. So once a stream flows (its owner set `paced` after the first token, and tokens come at least
two a `tick`), the reader sleeps to the next tick of a clock every slot shares and takes what arrived
meanwhile in one read. Before each wait it calls `before_wait`: before a tick's sleep the runner then
writes what it holds from this warm thread instead of waking the flusher's. A 64-token answer at ~13 ms a
token is then read in ~20 wake-ups instead of 64, and a worker's slots wake, and write, on the same
ticks. A stream slower than two events a tick is read as it comes: a tick would hold its tokens and save
no read (a CPU llama-server at 8 clients gives each stream a token every ~50 ms).

h11 is sans-I/O: the socket stays ours, which is what makes a sleep between reads possible (http.client's
buffered reader hides what it holds from anyone who would wait on the socket). Non-streamed calls stay
on httpx.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import h11

from services.common.errors import APIError
from services.worker.engines.upstream import error_from_raw, error_from_socket

READ_SIZE = 65536
CONNECT_TIMEOUT = 5.0
DONE_LINE = "data: [DONE]"

FOUND_AT_ONCE = 0.001
"""A read after a tick's sleep that took longer than this (seconds) had to wait for its data: the stream
no longer comes faster than the tick, so the next read does not sleep first."""


class SSEClient:
    """Opens streamed POSTs to one base URL; a connection whose stream was read to its end is kept for the next."""

    def __init__(
        self,
        base_url: str,
        *,
        upstream: str,
        timeout: float,
        keep: int,
        tick: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self._headers = list((headers or {}).items())
        """Sent with every request (the sidecar's key)."""
        self.upstream = upstream
        self.base_url = base_url
        self.timeout = timeout
        self.keep = keep
        self.tick = tick
        """Seconds between the reads of a flowing stream (0: every event is read as it comes)."""
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._tls else 80)
        self._authority = parts.netloc or self._host
        self._prefix = parts.path.rstrip("/")
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lines(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        before_wait: Callable[[bool], None] | None = None,
    ) -> Iterator[StreamLines]:
        """The response's lines; leaving the block early closes the connection, which cancels upstream."""
        payload = json.dumps(body).encode()
        head = [
            ("Host", self._authority),
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
            ("Content-Length", str(len(payload))),
            *self._headers,
            *headers.items(),
        ]
        conn, status = self._send(self._prefix + path, payload, head, before_wait)
        reader = StreamLines(conn, tick=self.tick, before_wait=before_wait)
        try:
            if status >= 400:
                raise error_from_raw(status, reader.read_all(), self.upstream)
            yield reader
        except (OSError, h11.ProtocolError) as exc:
            raise self._transport_error(exc) from exc
        finally:
            reader.drain()
            if reader.complete and conn.next_cycle():
                self._put(conn)
            else:
                conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _send(
        self, path: str, payload: bytes, headers: list[tuple[str, str]], before_wait: Callable[[bool], None] | None
    ) -> tuple[_Connection, int]:
        """Sent on a kept connection, or on a new one if that was closed by the sidecar meanwhile (it had
        not read the request, so sending it again runs it once). Returns the connection and the status."""
        while True:
            conn, reused = self._take()
            try:
                return conn, conn.request(path, payload, headers, before_wait)
            except (_Unanswered, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if not reused:
                    raise self._transport_error(exc) from exc
            except (OSError, h11.ProtocolError) as exc:
                conn.close()
                raise self._transport_error(exc) from exc
            except BaseException:  # before_wait's (the job is not wanted any more): the sidecar stops on close
                conn.close()
                raise

    def _take(self) -> tuple[_Connection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if not conn.closed_by_peer():
                return conn, True
            conn.close()
        try:
            sock = socket.create_connection((self._host, self._port), timeout=CONNECT_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        except OSError as exc:
            raise self._transport_error(exc) from exc
        sock.settimeout(self.timeout)
        return _Connection(sock), False

    def _put(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(conn)
                return
        conn.close()

    def _transport_error(self, exc: OSError | h11.ProtocolError) -> APIError:
        return error_from_socket(exc, self.upstream, self.base_url)


class _Unanswered(ConnectionError):
    """The connection ended before any byte of an answer (a kept connection the sidecar had closed)."""


class _Connection:
    """One socket to the sidecar and h11's state of it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.CLIENT)

    def request(
        self, path: str, payload: bytes, headers: list[tuple[str, str]], before_wait: Callable[[bool], None] | None
    ) -> int:
        """Send a POST and read its answer's head; its status. `before_wait` runs between the two."""
        out = self.http.send(h11.Request(method="POST", target=path, headers=headers))
        out += self.http.send(h11.Data(data=payload)) + self.http.send(h11.EndOfMessage())
        self.sock.sendall(out)
        if before_wait is not None:
            before_wait(False)
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(READ_SIZE)
                if not data and not self.http.trailing_data[0]:
                    raise _Unanswered("the sidecar closed the connection without answering")
                self.http.receive_data(data)
            elif isinstance(event, h11.Response):
                return event.status_code
            elif not isinstance(event, h11.InformationalResponse):
                raise _Unanswered(f"the sidecar answered {type(event).__name__} before a status")

    def next_cycle(self) -> bool:
        """Ready the connection for another request; False when it cannot take one (to be closed)."""
        if self.http.our_state is not h11.DONE or self.http.their_state is not h11.DONE:
            return False
        self.http.start_next_cycle()
        return True

    def closed_by_peer(self) -> bool:
        """An idle kept connection that reads as ready has been closed (or broken) by the sidecar."""
        poller = select.poll()  # not select(): a worker may hold file descriptors past 1024
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class StreamLines:
    """A response body as text lines (without their line ends), whatever its chunking; read in ticks
    while `paced` and flowing (see the module's docstring)."""

    def __init__(self, conn: _Connection, *, tick: float, before_wait: Callable[[bool], None] | None) -> None:
        self.conn = conn
        self.tick = tick
        self.before_wait = before_wait
        """Called before each wait for data: True when the wait is a tick's sleep (GenerationRequest.before_wait)."""
        self.paced = False
        """Set by the stream's owner once its first token is out, and cleared again near its end."""
        self.complete = False
        """The body was read to its end: the connection may serve another request."""
        self.done = False
        """`data: [DONE]` was read: the rest of the body is its end, so reading it keeps the connection."""
        self._flowing = False
        self._last = 0.0
        self._lines = self._split()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._lines)

    def _split(self) -> Iterator[str]:
        rest = b""
        for data in self._body():
            parts = (rest + data).split(b"\n")
            rest = parts.pop()
            for part in parts:
                line = part.decode(errors="replace").rstrip("\r")
                if line == DONE_LINE:
                    self.done = True
                yield line
        if rest:
            yield rest.decode(errors="replace").rstrip("\r")

    def read_all(self) -> bytes:
        """The whole body (an error's)."""
        return b"".join(self._body())

    def drain(self) -> None:
        """Read the body's end after `[DONE]`, so its connection can be kept."""
        if self.done and not self.complete:
            self.paced = False
            with contextlib.suppress(OSError, h11.ProtocolError):
                for _ in self._body():
                    pass

    def _body(self) -> Iterator[bytes]:
        """The body's bytes, everything one read brought in one piece."""
        http = self.conn.http
        got: list[bytes] = []
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:  # a cut chunked body, as when the sidecar is killed
                raise ConnectionResetError(f"the stream broke off: {exc}") from exc
            if event is h11.NEED_DATA:
                if got:
                    yield b"".join(got)
                    got = []
                http.receive_data(self._receive())
            elif isinstance(event, h11.Data):
                got.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                if got:
                    yield b"".join(got)
                return
            else:
                raise ConnectionResetError(f"the stream broke off: {type(event).__name__}")

    def _receive(self) -> bytes:
        """One read of the socket: at the next tick while the stream flows, else as soon as data comes."""
        sleeping = self.paced and self._flowing and self.tick > 0
        if self.before_wait is not None:
            self.before_wait(sleeping)
        if sleeping:
            time.sleep(self.tick - time.monotonic() % self.tick)  # one clock for all slots: they write together
            asked = time.monotonic()
            data = self.conn.sock.recv(READ_SIZE)
            now = time.monotonic()
            self._flowing = now - asked < FOUND_AT_ONCE
        else:
            data = self.conn.sock.recv(READ_SIZE)
            now = time.monotonic()
            self._flowing = now - self._last < self.tick / 2  # two reads a tick at least: ticks would save some
        self._last = now
        return data
