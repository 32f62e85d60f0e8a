"""Who can reach an API replica, checked before it listens: without API keys it serves every route to
anyone who connects, so it starts on a non-loopback address only when ALLOW_OPEN=true says that is meant
(compose's replicas listen on 0.0.0.0 inside their network, and compose may publish nginx anywhere)."""

from __future__ import annotations

import ipaddress

from services.common.settings import Settings

Address = tuple[str, int] | str | int
"""As gunicorn parses a bind: (host, port), a unix socket path, or an inherited file descriptor."""


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name (a compose service, a host name) may resolve to anything: not loopback


def open_problem(settings: Settings, addresses: list[Address]) -> str | None:
    """Why this replica must not start, or None. Unix sockets and inherited descriptors count as local."""
    if settings.api_keys_file is not None or settings.allow_open:
        return None
    public = [f"{a[0] or '0.0.0.0'}:{a[1]}" for a in addresses if isinstance(a, tuple) and not loopback(a[0])]
    if not public:
        return None
    return (
        f"refusing to start: no API keys (API_KEYS_FILE is empty) and this API listens on {', '.join(public)}, "
        "where anyone who reaches it may use every route, load and unload included. Create keys "
        "(python -m services.keys --file PATH create NAME --admin) and set API_KEYS_FILE, or set "
        "ALLOW_OPEN=true to serve everyone on purpose."
    )
