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
    """The stack runs its own redis-server only when REDIS_URL points at this machine."""
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


def config(settings: Settings, layout: Layout, secret: str) -> str:
    """redis.conf text. The queue and streams are short-lived, so no snapshots: a restart starts clean."""
    lines = [
        *_listen(settings),
        f"bind {settings.redis_bind}",
        "protected-mode yes",
        f"requirepass {_quoted(secret)}",
        f"dir {layout.redis_dir}",
        'save ""',
        "appendonly no",
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
