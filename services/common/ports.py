"""Free loopback ports for the processes a test, a benchmark or a self-check starts (never a fixed one)."""

from __future__ import annotations

import socket


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port the kernel just handed out, so free a moment ago; the caller binds it soon."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_run(count: int, tries: int = 50) -> int:
    """First of `count` consecutive free ports: API replicas listen on API_BASE_PORT + i."""
    for _ in range(tries):
        base = free_port()
        if base + count < 65536 and all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")
