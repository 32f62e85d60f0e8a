"""The API's stream reads on a held connection (services/api/pipeline/stream_reader.py), against a real Redis."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from services.api.pipeline.stream_reader import StreamReader, entries
from services.common.redis_client import connect

pytestmark = pytest.mark.integration


def own_ids(client: redis.Redis, name: str) -> set[int]:
    return {c["id"] for c in client.client_list() if c["name"] == name}


@pytest.fixture()
def named(redis_url: str):
    """A client of ours whose connections are named, so CLIENT LIST tells them apart."""
    client = connect(redis_url, longest_block=1.0)
    client.connection_pool.connection_kwargs["client_name"] = "reader-under-test"
    yield client
    client.connection_pool.disconnect()


def test_reads_what_is_there_then_blocks_until_the_next_entry(named, redis_client):
    redis_client.xadd("s", {"kind": "delta", "data": "one"})
    reader = StreamReader(named)
    got = reader.read("s", "0-0", block_ms=500, count=256)
    assert [fields for _, fields in got] == [{b"kind": b"delta", b"data": b"one"}]
    last = got[0][0]
    assert isinstance(last, str)

    threading.Timer(0.2, lambda: redis_client.xadd("s", {"kind": "done", "data": "two"})).start()
    started = time.monotonic()
    got = reader.read("s", last, block_ms=3000, count=256)
    assert 0.15 < time.monotonic() - started < 2
    assert [fields[b"data"] for _, fields in got] == [b"two"]

    started = time.monotonic()
    assert reader.read("s", got[0][0], block_ms=300, count=256) == []
    assert time.monotonic() - started >= 0.25
    reader.close()


def test_one_connection_serves_every_read_and_goes_back_to_the_pool(named, redis_client):
    reader = StreamReader(named)
    for _ in range(5):
        reader.read("s", "0-0", block_ms=1, count=256)
    held = own_ids(redis_client, "reader-under-test")
    assert len(held) == 1
    reader.close()
    again = StreamReader(named)
    again.read("s", "0-0", block_ms=1, count=256)
    assert own_ids(redis_client, "reader-under-test") == held, "the pooled connection is reused, not a new one"
    again.close()


def test_a_connection_redis_closed_is_replaced_once(named, redis_client):
    redis_client.xadd("s", {"kind": "delta", "data": "one"})
    reader = StreamReader(named)
    reader.read("s", "0-0", block_ms=1, count=256)
    (held,) = own_ids(redis_client, "reader-under-test")
    redis_client.client_kill_filter(_id=held)
    got = reader.read("s", "0-0", block_ms=1, count=256)
    assert [fields[b"data"] for _, fields in got] == [b"one"]
    assert own_ids(redis_client, "reader-under-test") not in ({held}, set())
    reader.close()


def test_a_timeout_is_raised_and_the_connection_given_back():
    with socket.socket() as listener:  # completes the handshake, then never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = connect(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", longest_block=0.1, socket_timeout=0.3)
        client.connection_pool.connection_kwargs["health_check_interval"] = 0
        reader = StreamReader(client)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            reader.read("s", "0-0", block_ms=50, count=256)
        assert time.monotonic() - started < 2, "a timeout is not retried"
        pool = client.connection_pool
        assert pool.pool.qsize() == pool.max_connections, "the broken connection went back to the pool"
        client.close()


def test_both_protocols_replies_give_the_same_entries():
    resp2 = [[b"s", [[b"1-0", [b"kind", b"delta", b"data", b"x"]]]]]
    resp3 = {b"s": [[b"1-0", [b"kind", b"delta", b"data", b"x"]]]}
    assert entries(resp2) == entries(resp3) == [("1-0", {b"kind": b"delta", b"data": b"x"})]
    assert entries(None) == entries([]) == []
