"""Redis faults stay bounded: a silent server times out, links are kept alive, streams always expire."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from services.api.pipeline.gateway import Gateway
from services.api.pipeline.leases import Flight
from services.common import keys
from services.common.events import Delta, Started
from services.common.redis_client import BLOCK_MARGIN_S, LONGEST_BLOCK_S, connect
from services.common.registry import Registry
from services.worker.publisher import StreamPublisher
from services.worker.slots import DEQUEUE_TIMEOUT
from tests.integration.test_queue_plumbing import job

pytestmark = pytest.mark.integration


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """A TCP listener that never accepts and never answers: the kernel completes the handshake, then nothing."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def test_a_silent_server_times_out_within_the_bound(silent_server):
    client = connect(silent_server, longest_block=0.2, socket_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert time.monotonic() - started < 2, "one attempt of 0.5 s: a timeout is not retried"
    client.close()


def test_the_default_client_outlasts_rqs_blmove_and_no_more(silent_server):
    """The default client (the worker's) gives up after the longest block + margin, not never."""
    client = connect(silent_server)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == LONGEST_BLOCK_S + BLOCK_MARGIN_S
    assert LONGEST_BLOCK_S >= DEQUEUE_TIMEOUT, "RQ's BLMOVE must not outlast the socket timeout"


def test_a_block_shorter_than_the_socket_timeout_is_not_a_timeout(redis_client, redis_url):
    client = connect(redis_url, longest_block=1.0, socket_timeout=1.5)
    started = time.monotonic()
    assert client.xread({"nothing-here": "0-0"}, block=1000) == []
    assert client.blpop(["nothing-here-either"], timeout=1) is None
    assert time.monotonic() - started >= 1.9
    client.close()


def test_connections_have_tcp_keepalive(redis_client, redis_url):
    client = connect(redis_url)
    conn = client.connection_pool.get_connection()
    try:
        sock = conn._sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
    finally:
        client.connection_pool.release(conn)
        client.close()


def test_a_stream_written_after_the_api_deleted_it_still_expires(redis_client):
    """The client went away and the API dropped the stream; a token already in flight re-creates it."""
    gateway = Gateway(redis_client, Registry(redis_client, 5), stream_ttl=60, keepalive=0.2)
    out = StreamPublisher(redis_client, "cmpl-late", ttl=60, deadline=time.time() + 30)
    out.publish(Started("w1", time.time()))
    gateway.release(Flight("cmpl-late", job("cmpl-late")), finished=True)
    assert not redis_client.exists(keys.stream("cmpl-late"))
    out.publish(Delta("late", 1))
    assert redis_client.xlen(keys.stream("cmpl-late")) == 1
    assert 0 < redis_client.ttl(keys.stream("cmpl-late")) <= 60


def test_every_event_refreshes_the_ttl(redis_client):
    out = StreamPublisher(redis_client, "cmpl-ttl", ttl=60, deadline=time.time() + 30)
    out.publish(Started("w1", time.time()))
    redis_client.expire(keys.stream("cmpl-ttl"), 5)
    out.publish(Delta("a", 1))
    assert redis_client.ttl(keys.stream("cmpl-ttl")) > 5
