"""One way to build a Redis client, so timeouts, keepalive and retries are the same everywhere.

A Redis across a network can vanish without a FIN or RST (a host gone, a NAT that forgot the flow):
without a socket timeout a read on that half-open link waits forever and the thread with it. Every
client made here has a bounded connect, a read timeout longer than any blocking command it runs, and
TCP keepalive, which finds a dead peer on an idle pooled connection within a minute.
"""

from __future__ import annotations

import socket

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

CONNECT_TIMEOUT_S = 3.0
LONGEST_BLOCK_S = 5.0
"""The longest blocking command a worker makes: RQ's BLMOVE (slots.DEQUEUE_TIMEOUT); BLPOP blocks 1 s."""
BLOCK_MARGIN_S = 10.0
"""Read timeout beyond the longest block, as RQ's own worker sets it (dequeue timeout + 10)."""
HEALTH_CHECK_S = 30
RETRIES = 2


def keepalive_options() -> dict[int, int]:
    """First probe after 15 s idle, then every 5 s, dead after 3 misses; options a platform lacks are skipped."""
    wanted = {"TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
    if not hasattr(socket, "TCP_KEEPIDLE"):
        wanted["TCP_KEEPALIVE"] = wanted.pop("TCP_KEEPIDLE")  # macOS spells idle time TCP_KEEPALIVE
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def connect(
    url: str,
    *,
    max_connections: int = 256,
    longest_block: float = LONGEST_BLOCK_S,
    socket_timeout: float | None = None,
) -> redis.Redis:
    """A pooled client whose every call is bounded in time.

    `socket_timeout` (default `longest_block` + 10 s) must exceed the longest blocking read made with
    this client (XREAD BLOCK, BLMOVE, BLPOP), or those reads would fail while Redis is healthy.

    Retries cover connection errors only (a pooled connection that Redis closed, a restart): the
    command is resent on a fresh connection. A timeout is not retried: the command may have run (an
    XADD twice duplicates text, an RPUSH twice runs a job twice) and a hung Redis would only make the
    caller wait twice as long. Callers whose command is idempotent and who prefer to wait may retry.
    """
    timeout = socket_timeout if socket_timeout is not None else longest_block + BLOCK_MARGIN_S
    if timeout <= longest_block:
        raise ValueError(f"socket_timeout {timeout}s must exceed the longest block {longest_block}s")
    tcp = (
        {} if url.startswith("unix://") else {"socket_keepalive": True, "socket_keepalive_options": keepalive_options()}
    )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=timeout,
        health_check_interval=HEALTH_CHECK_S,
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5), RETRIES, supported_errors=(redis.ConnectionError,)
        ),
        **tcp,
    )
    return redis.Redis(connection_pool=pool)
