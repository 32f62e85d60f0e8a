"""One way to build a Redis client, so timeouts, keepalive and retries are the same everywhere.

A Redis across a network can vanish without a FIN or RST (a host gone, a NAT that forgot the flow):
without a socket timeout a read on that half-open link waits forever and the thread with it. Every
client made here has a bounded connect, a read timeout longer than any blocking command it runs, and
TCP keepalive, which finds a dead peer on an idle pooled connection within a minute.

Over a network Redis may speak TLS: a `rediss://` URL, verified against REDIS_TLS_CA_FILE (the system's
CAs when empty), presenting REDIS_TLS_CERT_FILE/KEY_FILE where a server asks for client certificates.

Redis that fails over: with REDIS_SENTINELS set, each new connection asks the Sentinels for the master of
REDIS_MASTER_NAME. After a failover the connections to the old master fail (a ConnectionError, retried here
once or twice on fresh connections, which find the new master; or, while the Sentinels still agree on none, a
MasterNotFoundError, which is a ConnectionError too, so every caller's Redis-down path handles it: a 503
with Retry-After in the API, a retry loop in the worker). Lua scripts need nothing: they are run through
redis-py's Script objects, which load a script again when the new master answers NOSCRIPT.
"""

from __future__ import annotations

import socket
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from services.common.settings import Settings

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


def tls_options(settings: Settings) -> dict[str, object]:
    """redis-py's SSL options for a `rediss://` REDIS_URL (none for redis:// or unix://): the server's
    certificate is always verified, and its name checked against the URL's host."""
    if not settings.redis_url.startswith("rediss://"):
        return {}
    options: dict[str, object] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file is not None and settings.redis_tls_key_file is not None:
        options |= {"ssl_certfile": str(settings.redis_tls_cert_file), "ssl_keyfile": str(settings.redis_tls_key_file)}
    return options


def from_settings(settings: Settings, **kwargs: object) -> redis.Redis:
    """`connect` to REDIS_URL with the TLS settings that go with it, or to the master the Sentinels name
    (REDIS_SENTINELS); REDIS_PASSWORD is the password where the URL carries none."""
    if settings.redis_sentinels:
        return sentinel_master(settings, **kwargs)  # type: ignore[arg-type]
    return connect(settings.redis_url, tls=tls_options(settings), password=settings.redis_password or None, **kwargs)  # type: ignore[arg-type]


def sentinels(settings: Settings) -> list[tuple[str, int]]:
    """REDIS_SENTINELS as (host, port) pairs."""
    pairs = (a.strip().rpartition(":") for a in settings.redis_sentinels.split(",") if a.strip())
    return [(host.strip("[]"), int(port)) for host, _, port in pairs]


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (each connection to the master the Sentinels name now) that waits for a free
    connection as `connect`'s pool does, instead of failing at max_connections."""


def sentinel_master(
    settings: Settings,
    *,
    max_connections: int = 256,
    longest_block: float = LONGEST_BLOCK_S,
    socket_timeout: float | None = None,
) -> redis.Redis:
    """A client of the master that REDIS_SENTINELS name REDIS_MASTER_NAME, bounded as `connect`'s is. REDIS_URL
    gives the rest (password, user, database, rediss:// for TLS to Redis and the Sentinels alike); its host
    is not used. The Sentinels ask for the same password as Redis (as ours are configured)."""
    timeout = _read_timeout(longest_block, socket_timeout)
    parts = urlsplit(settings.redis_url)
    password = unquote(parts.password) if parts.password else settings.redis_password or None
    tls = tls_options(settings) | ({"ssl": True} if parts.scheme == "rediss" else {})
    tcp = {"socket_keepalive": True, "socket_keepalive_options": keepalive_options()}
    asking = Sentinel(
        sentinels(settings),
        sentinel_kwargs={
            "password": password,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": CONNECT_TIMEOUT_S,
            **tcp,
            **tls,
        },
    )
    pool = BlockingSentinelPool(
        settings.redis_master_name,
        asking,
        max_connections=max_connections,
        timeout=5,
        db=int(parts.path.lstrip("/") or 0),
        username=unquote(parts.username) if parts.username else None,
        password=password,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=timeout,
        health_check_interval=HEALTH_CHECK_S,
        retry=_retry(),
        **tcp,
        **tls,
    )
    return redis.Redis(connection_pool=pool)


def _read_timeout(longest_block: float, socket_timeout: float | None) -> float:
    timeout = socket_timeout if socket_timeout is not None else longest_block + BLOCK_MARGIN_S
    if timeout <= longest_block:
        raise ValueError(f"socket_timeout {timeout}s must exceed the longest block {longest_block}s")
    return timeout


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), RETRIES, supported_errors=(redis.ConnectionError,))


def connect(
    url: str,
    *,
    max_connections: int = 256,
    longest_block: float = LONGEST_BLOCK_S,
    socket_timeout: float | None = None,
    tls: dict[str, object] | None = None,
    password: str | None = None,
) -> redis.Redis:
    """A pooled client whose every call is bounded in time.

    `socket_timeout` (default `longest_block` + 10 s) must exceed the longest blocking read made with
    this client (XREAD BLOCK, BLMOVE, BLPOP), or those reads would fail while Redis is healthy.

    Retries cover connection errors only (a pooled connection that Redis closed, a restart): the
    command is resent on a fresh connection. A timeout is not retried: the command may have run (an
    XADD twice duplicates text, an RPUSH twice runs a job twice) and a hung Redis would only make the
    caller wait twice as long. Callers whose command is idempotent and who prefer to wait may retry.
    """
    timeout = _read_timeout(longest_block, socket_timeout)
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
        retry=_retry(),
        **tcp,
        **(tls or {}),
        **({"password": password} if password else {}),  # a password in the URL wins
    )
    return redis.Redis(connection_pool=pool)
