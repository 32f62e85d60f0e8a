"""Ports for the processes tests start: below the kernel's ephemeral range (where an outgoing connection
could take one before our child binds it), free, and never the same twice in one process."""

from __future__ import annotations

import socket

from services.common import ports


def test_free_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    drawn = [ports.free_port() for _ in range(50)]
    assert len(set(drawn)) == 50
    assert all(ports.LOWEST <= p < ports.ephemeral_low() for p in drawn), drawn
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", drawn[-1]))  # really free


def test_a_taken_port_is_never_drawn(monkeypatch) -> None:
    """900 distinct draws from a range of 1,000 around a taken port: without the bind check it would be
    drawn nine times in ten."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not ports.port_is_free(port)
        monkeypatch.setattr(ports, "LOWEST", port - 1)
        monkeypatch.setattr(ports, "ephemeral_low", lambda: port + 999)
        monkeypatch.setattr(ports, "_given", set())
        drawn = {ports.free_port() for _ in range(900)}
    assert port not in drawn and len(drawn) == 900


def test_a_run_of_consecutive_ports() -> None:
    base = ports.free_run(3)
    assert all(ports.port_is_free(base + i) for i in range(3))
    assert ports.free_port() not in range(base, base + 3)
