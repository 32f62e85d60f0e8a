"""One way to build a Redis client, so timeouts and pool sizes are the same everywhere."""

from __future__ import annotations

import redis


def connect(url: str, *, max_connections: int = 256) -> redis.Redis:
    """A client with bounded connect time; reads may block (XREAD BLOCK), so no socket read timeout."""
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, socket_connect_timeout=3, health_check_interval=30
    )
    return redis.Redis(connection_pool=pool)
