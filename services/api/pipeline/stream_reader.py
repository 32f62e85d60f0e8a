"""Blocking reads of one request's event stream over a connection kept for the request's life.

A streamed request wakes once per batch of tokens (about 20 times a second), and on the 2-core VM
redis-py's path around each XREAD (pool checkout and release, retry wrapper, observability hooks,
reply callbacks) cost as much CPU as the wake-up itself: about 200 µs a read against 100 µs for the
same read sent and parsed on a held connection. So the request's thread takes one connection from
the client's pool at its first read, sends XREAD on it with redis-py's own `send_command` and
`read_response`, and gives it back when the request ends (`close`).

Errors behave as the client's: a connection that Redis closed (a restart, an idle cut) is retried
once on a fresh one, as `redis_client.connect`'s Retry does, and a timeout is raised as it is.
"""

from __future__ import annotations

import redis
from redis.connection import AbstractConnection

Entry = tuple[str, dict[bytes, bytes]]


class StreamReader:
    """XREAD BLOCK on one stream at a time; not shared between threads (each request owns one)."""

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self._conn: AbstractConnection | None = None

    def read(self, key: str, last: str, *, block_ms: int, count: int) -> list[Entry]:
        """Entries after `last` (id, fields), waiting up to `block_ms`; [] when none came."""
        try:
            return self._read(key, last, block_ms, count)
        except redis.ConnectionError:
            return self._read(key, last, block_ms, count)  # once, on a fresh connection (see the docstring)

    def close(self) -> None:
        """Give the connection back to the pool; the next read takes one again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self.pool.release(conn)

    def _read(self, key: str, last: str, block_ms: int, count: int) -> list[Entry]:
        if self._conn is None:
            self._conn = self.pool.get_connection()
        conn = self._conn
        try:
            conn.send_command("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, last)
            reply = conn.read_response()
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: the connection cannot be trusted
            self.close()
            raise
        return entries(reply)


def entries(reply: object) -> list[Entry]:
    """The entries of a one-stream XREAD reply, as RESP2 (a list per stream) or RESP3 (a map) sends it."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entry[1] for entry in reply)  # type: ignore[attr-defined]
    out: list[Entry] = []
    for stream in streams:
        for entry_id, fields in stream:
            if not isinstance(fields, dict):
                pairs = iter(fields)
                fields = dict(zip(pairs, pairs, strict=True))
            out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields))
    return out
