"""SSEClient against a loopback HTTP/1.1 server that writes its chunked body in awkward pieces."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from services.common.errors import InvalidRequest, ServiceUnavailable
from services.common.ports import free_port
from services.worker.engines.base import EngineError
from services.worker.engines.sse_client import SSEClient
from tests.support.loopback_sidecar import END, LoopbackSidecar, start_event_stream, write_chunk

EVENTS = [b'data: {"n": 1}\r\n\r\n', b": ping\n\n", b'data: {"n": 2}\n\ndata: [DONE]\n\n']


class Sidecar(LoopbackSidecar):
    """Counts connections; `pieces` are written as chunks, split mid-line, with a pause between them."""

    def __init__(self) -> None:
        super().__init__(Play)
        self.connections = 0
        self.status = 200
        self.pieces = [b"".join(EVENTS)[i : i + 7] for i in range(0, len(b"".join(EVENTS)), 7)]
        self.endless = False
        self.gap = 0.002
        """Seconds between two pieces."""
        self.sent_at: list[float] = []
        """When each piece was written (time.monotonic)."""
        self.hold: threading.Event | None = None
        """Answer only once this is set (2 s at most: then `held_too_long`)."""
        self.held_too_long = False
        self.cut = False
        """Die after the first event: the body ends without its last chunk, as when the sidecar is killed."""


class Play(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Sidecar

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.hold is not None and not self.server.hold.wait(2):
            self.server.held_too_long = True
        if self.server.status != 200:
            body = b'{"error": {"message": "bad temperature", "type": "invalid_request_error", "code": 400}}'
            self.send_response(self.server.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        start_event_stream(self)
        pieces = iter(lambda: b"data: {}\n\n", None) if self.server.endless else self.server.pieces
        if self.server.cut:
            pieces = [EVENTS[0]]
        try:
            for piece in pieces:
                self.server.sent_at.append(time.monotonic())
                write_chunk(self.wfile, piece)
                time.sleep(self.server.gap)
            if self.server.cut:
                self.close_connection = True
                return
            self.wfile.write(END)
        except OSError:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def sidecar() -> Iterator[Sidecar]:
    server = Sidecar()
    with server.serving():
        yield server


def read_all(client: SSEClient) -> list[str]:
    with client.lines("/v1/completions", {"prompt": "x"}, {}) as lines:
        return [line for line in lines if line]


def test_lines_survive_any_chunking_and_crlf(sidecar: Sidecar) -> None:
    client = SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2)
    assert read_all(client) == ['data: {"n": 1}', ": ping", 'data: {"n": 2}', "data: [DONE]"]


def test_a_stream_read_to_done_keeps_its_connection(sidecar: Sidecar) -> None:
    client = SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2)
    for _ in range(3):
        with client.lines("/v1/completions", {}, {}) as lines:
            for line in lines:
                if line == "data: [DONE]":
                    break  # as the engine's reader stops: the client still reads the body's end
    assert sidecar.connections == 1


def test_a_stream_left_early_closes_its_connection(sidecar: Sidecar) -> None:
    sidecar.endless = True
    client = SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2)
    with client.lines("/v1/completions", {}, {}) as lines:
        next(lines)
    sidecar.endless = False
    read_all(client)
    assert sidecar.connections == 2


def test_a_kept_connection_the_sidecar_closed_is_replaced(sidecar: Sidecar) -> None:
    client = SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2)
    read_all(client)
    for conn in client._idle:
        assert conn.sock is not None
        conn.sock.shutdown(socket.SHUT_RDWR)  # as a sidecar's idle timeout would end it
    assert read_all(client)[-1] == "data: [DONE]"
    assert sidecar.connections == 2


def test_errors_map_to_our_classes(sidecar: Sidecar) -> None:
    sidecar.status = 400
    with pytest.raises(InvalidRequest, match="bad temperature"):
        read_all(SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2))
    with pytest.raises(ServiceUnavailable):
        read_all(SSEClient(f"http://127.0.0.1:{free_port()}", upstream="vllm", timeout=5, keep=2))
    sidecar.status, sidecar.cut = 200, True
    with pytest.raises(EngineError, match="broke off"):
        read_all(SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2))


def timed_events(count: int) -> list[bytes]:
    """One event a piece: the server stamps each as it writes it (sent_at)."""
    return [b'data: {"n": %d}\n\n' % i for i in range(count)] + [b"data: [DONE]\n\n"]


def read_paced(client: SSEClient, sidecar: Sidecar) -> tuple[list[str], list[float]]:
    """Lines and their delays (read time minus the time the server wrote them), pacing from the first line."""
    sleeps: list[float] = []
    delays: list[float] = []
    lines_read = []
    waits = {True: sleeps, False: []}
    with client.lines("/v1/completions", {}, {}, before_wait=lambda sleep: waits[sleep].append(1.0)) as lines:
        for line in lines:
            if line.startswith("data: {"):
                delays.append(time.monotonic() - sidecar.sent_at[len(delays)])
                lines.paced = True
            if line:
                lines_read.append(line)
    return lines_read, [len(sleeps), *delays]


def test_a_flowing_stream_is_read_in_ticks(sidecar: Sidecar) -> None:
    """40 events 5 ms apart, read with a 50 ms tick: a handful of reads, `before_wait(True)` before each sleep."""
    sidecar.pieces, sidecar.gap = timed_events(40), 0.005
    client = SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2, tick=0.05)
    lines, (sleeps, *delays) = read_paced(client, sidecar)
    assert lines == [f'data: {{"n": {i}}}' for i in range(40)] + ["data: [DONE]"]
    assert 2 <= sleeps <= 10, sleeps  # ~200 ms of events in 50 ms ticks; read as they came, it would be 0
    assert max(delays) > 0.01  # events waited for their tick


def test_a_slow_stream_is_read_as_it_comes(sidecar: Sidecar) -> None:
    """Events 80 ms apart with a 20 ms tick: pacing stops after one sleep that found nothing, so no event waits."""
    sidecar.pieces, sidecar.gap = timed_events(6), 0.08
    client = SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2, tick=0.02)
    lines, (sleeps, *delays) = read_paced(client, sidecar)
    assert len(lines) == 7
    assert sleeps <= 1, sleeps
    assert sorted(delays)[-2] < 0.015, delays  # all but at most one read at once


def test_before_wait_runs_once_the_request_is_out_before_its_answer(sidecar: Sidecar) -> None:
    """The runner writes a job's `started` there: the sidecar already reads the prompt meanwhile. The
    sidecar here holds its answer until then (2 s at most), so a call after the answer would come too late."""
    told = threading.Event()
    sidecar.hold = told
    client = SSEClient(sidecar.url, upstream="vllm", timeout=5, keep=2)
    calls: list[bool] = []
    before = lambda sleeping: calls.append(sleeping) or told.set()  # noqa: E731
    with client.lines("/v1/completions", {}, {}, before_wait=before) as lines:
        assert [line for line in lines if line][-1] == "data: [DONE]"
    assert calls[0] is False  # a wait for data, not a tick's sleep
    assert not sidecar.held_too_long, "before_wait came only with the answer"
