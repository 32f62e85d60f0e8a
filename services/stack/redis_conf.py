"""The native stack's redis-server: always password-protected, configured by a file so the password
never shows in `ps`, and bound to loopback unless REDIS_BIND adds an address other hosts can reach.
With a `rediss://` REDIS_URL it speaks TLS only (no plain port), with REDIS_TLS_CERT_FILE/KEY_FILE as its
certificate; clients verify it against REDIS_TLS_CA_FILE, and a client certificate is checked if sent."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from services.common.settings import Settings
from services.stack.layout import Layout

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class RedisConfigError(ValueError):
    """The settings cannot make a working redis.conf; the message names the setting to change."""


def is_local(settings: Settings) -> bool:
    """The stack runs its own redis-server only when REDIS_URL points at this machine and no Sentinels
    (REDIS_SENTINELS) name the master instead."""
    if settings.redis_sentinels:
        return False
    parts = urlsplit(settings.redis_url)
    return parts.scheme in ("redis", "rediss") and (parts.hostname or "127.0.0.1") in LOCAL_HOSTS


def port(settings: Settings) -> int:
    return urlsplit(settings.redis_url).port or 6379


def password(settings: Settings, layout: Layout) -> str:
    """REDIS_PASSWORD, else one already in REDIS_URL, else one generated once and kept in RUN_DIR."""
    if settings.redis_password:
        return settings.redis_password
    in_url = urlsplit(settings.redis_url).password
    if in_url:
        return unquote(in_url)
    stored = layout.redis_password_file
    if stored.exists():
        return stored.read_text().strip()
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    generated = secrets.token_urlsafe(24)
    fd = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(generated + "\n")
    return generated


def url_with_password(settings: Settings, secret: str, host: str | None = None) -> str:
    """REDIS_URL with the password in it (and optionally another host), as API and workers need it."""
    parts = urlsplit(settings.redis_url)
    netloc = f":{quote(secret, safe='')}@{host or parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    return parts._replace(netloc=netloc).geturl()


PERSISTENCE = ('save ""', "appendonly yes", "appendfsync everysec")
"""An append-only file fsynced once a second, no RDB snapshots: a restart keeps the queue, the keys' counters
and usage, losing at most the last second of writes; a write never waits for the disk."""

SENTINEL_QUORUM = 2
"""Of three Sentinels, two must agree the master is down: one partitioned Sentinel cannot start a failover."""
SENTINEL_TIMING = {"down-after-milliseconds": 3000, "failover-timeout": 30000, "parallel-syncs": 1}
"""A master silent for 3 s is down (Sentinel's default is 30 s); the failover that follows took about 4 s
more here, inside the 10 s the 503 window may last (tests/e2e/stack/test_redis_failover.py measures it).
deploy/kubernetes/components/redis-sentinel/configure.sh sets the same (tests/unit/test_kubernetes.py)."""


def config(settings: Settings, layout: Layout, secret: str) -> str:
    """redis.conf text, persistent (PERSISTENCE). `masterauth` lets it follow a master with the same
    password, should Sentinel make it a replica."""
    lines = [
        *_listen(settings),
        f"bind {settings.redis_bind}",
        "protected-mode yes",
        f"requirepass {_quoted(secret)}",
        f"masterauth {_quoted(secret)}",
        f"dir {layout.redis_dir}",
        *PERSISTENCE,
        "daemonize no",
        'logfile ""',
    ]
    return "\n".join(lines) + "\n"


def sentinel_config(
    *, port: int, master: tuple[str, int], secret: str, master_name: str, bind: str = "127.0.0.1"
) -> str:
    """sentinel.conf text for one Sentinel watching `master` (Sentinel rewrites this file as it learns, so it
    is written anew before each start). The Sentinel asks for the same password as Redis and gives it."""
    host, master_port = master
    lines = [
        f"port {port}",
        f"bind {bind}",
        f"requirepass {_quoted(secret)}",
        f"sentinel sentinel-pass {_quoted(secret)}",
        f"sentinel monitor {master_name} {host} {master_port} {SENTINEL_QUORUM}",
        f"sentinel auth-pass {master_name} {_quoted(secret)}",
        *(f"sentinel {option} {master_name} {value}" for option, value in SENTINEL_TIMING.items()),
        "daemonize no",
        'logfile ""',
    ]
    return "\n".join(lines) + "\n"


def _listen(settings: Settings) -> list[str]:
    """`port N`, or for rediss:// `port 0` (no plain TCP at all) and the TLS port with its files."""
    if not settings.redis_url.startswith("rediss://"):
        return [f"port {port(settings)}"]
    if settings.redis_tls_cert_file is None or settings.redis_tls_key_file is None:
        raise RedisConfigError("a rediss:// REDIS_URL on this machine needs REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE")
    lines = [
        "port 0",
        f"tls-port {port(settings)}",
        f"tls-cert-file {_quoted(str(settings.redis_tls_cert_file))}",
        f"tls-key-file {_quoted(str(settings.redis_tls_key_file))}",
    ]
    if settings.redis_tls_ca_file is None:
        return [*lines, "tls-auth-clients no"]
    return [*lines, f"tls-ca-cert-file {_quoted(str(settings.redis_tls_ca_file))}", "tls-auth-clients optional"]


def _quoted(value: str) -> str:
    """A double-quoted redis.conf string, so a password with spaces or quotes survives."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_conf(settings: Settings, layout: Layout, secret: str) -> Path:
    layout.redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(layout.redis_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(config(settings, layout, secret))
    return layout.redis_conf
