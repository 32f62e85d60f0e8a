"""One way to build a Redis client, so timeouts and pool sizes are the same everywhere."""

from __future__ import annotations

import redis


def connect(url: str, *, max_connections: int = 256, socket_timeout: float | None = None) -> redis.Redis:
    """A client with bounded connect time. `socket_timeout` must exceed the longest blocking read
    (XREAD BLOCK / BLMOVE) made with it; a hung Redis then fails requests instead of hanging threads."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_connect_timeout=3,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
