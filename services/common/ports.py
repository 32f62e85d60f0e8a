"""Free loopback ports for the processes a test, a benchmark or a self-check starts (never a fixed one).

Ports are drawn at random below the kernel's ephemeral range. A port the kernel hands out for port 0 is
an ephemeral one, and between the moment it is released and the moment our child binds it, any outgoing
connection on the machine may take it as its local port (seen: nginx's bind failed with EADDRINUSE in a
loaded test run). Below the range only listeners compete, and a random draw keeps parallel test
workers apart.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32_768
"""Linux's default; macOS's range starts at 49152, above it."""
_draw = random.SystemRandom()  # unaffected by a test that seeds `random`
_given: set[int] = set()


def port_is_free(port: int, *, reuse_address: bool = False) -> bool:
    """Whether a listener could bind `port` on loopback now. `reuse_address`: check as a server that sets
    SO_REUSEADDR binds (llama-server does), which TIME_WAIT sockets a killed one left do not stop."""
    with socket.socket() as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def free_port() -> int:
    """A port free now, below the ephemeral range, not handed out before by this process; the caller
    binds it soon. Where the range leaves no room below it, the kernel's choice."""
    top = ephemeral_low()
    if top - LOWEST >= 1_000:
        for _ in range(200):
            port = _draw.randrange(LOWEST, top)
            if port not in _given and port_is_free(port):
                _given.add(port)
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_run(count: int, tries: int = 50) -> int:
    """First of `count` consecutive free ports: API replicas listen on API_BASE_PORT + i."""
    for _ in range(tries):
        base = free_port()
        if base + count < 65536 and all(port_is_free(base + i) for i in range(count)):
            _given.update(range(base, base + count))
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")
