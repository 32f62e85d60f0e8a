"""Leases that are leases: each API process renews the leases of its requests in flight while their
clients are connected, so a replica that dies lets go of its generations and admission slots within
LEASE_TTL rather than at REQUEST_TIMEOUT. A key's concurrency entries are renewed in the same round.

One daemon thread per process renews everything it holds in one pipelined round trip every LEASE_TTL/3,
so one late round still leaves a margin. The same round looks at each client's socket: gunicorn's
threaded worker never tells the app that a client hung up while the app waits for the answer, so a
non-streaming request would otherwise run to its end for nobody. A client that hung up loses its lease
(the worker stops between tokens) and its request thread learns it at its next quiet tick.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import redis

from services.api.limits.key_limits import KeyLimits
from services.api.limits.ratelimit import Quota
from services.common import keys
from services.common.events import Usage
from services.common.jobs import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    """What admission (admission.py) gave a request: its key's limits and charge (None when unkeyed) and its
    place in the queue when enqueued (0 = next to run; jobs ahead may move only if a fairer newcomer passes it).
    Defined beside the Flight that carries it, so admission and leases do not import each other."""

    limits: KeyLimits | None = None
    quota: Quota | None = None
    position: int = 0


@dataclass(eq=False)
class Flight:
    """One admitted request as this process holds it: the job of its current attempt and its client."""

    rid: str
    """The client's id, which keys the admission entry; the job's id changes with a retry."""
    job: Job
    client: socket.socket | None = None
    gone: bool = False
    """Set by the keeper when the client hung up; the request thread then releases everything."""
    suspect: int = 0
    """Quiet ticks in a row on which the job looked stranded (see Gateway's liveness check)."""
    admitted: Admitted | None = None
    """Its key's limits and charge, and its queue position at admission (admission.py)."""
    usage: Usage | None = None
    """The tokens its `done` event reported, for the key's usage and TPM correction at release."""
    started: bool = False
    """Whether an event of its job has been read: a Redis lost after that fails it (gateway.RIDE_OUT_S)."""

    @property
    def key_concurrency(self) -> str | None:
        """The key whose concurrency set holds this request (renewed with the lease), if any."""
        limits = self.admitted.limits if self.admitted else None
        return limits.name if limits is not None and limits.concurrency else None


def hung_up(sock: socket.socket) -> bool:
    """Whether the peer closed (EOF) or reset the connection; a peek, so nothing is consumed.

    Data waiting (a pipelined next request) means the client is there. TLS sockets cannot be peeked
    at raw, so they are taken as connected (nginx terminates TLS here anyway).
    """
    if isinstance(sock, ssl.SSLSocket) or sock.fileno() < 0:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class LeaseKeeper:
    """Holds this process's flights and renews their leases and admission entries together."""

    def __init__(self, client: redis.Redis, *, ttl: float) -> None:
        self.redis = client
        self.ttl = ttl
        self.interval = ttl / 3
        self._flights: dict[str, Flight] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def expiry(self) -> float:
        """The admission score of an entry renewed now."""
        return time.time() + self.ttl

    def hold(self, flight: Flight) -> None:
        with self._lock:
            self._flights[flight.rid] = flight
            self._ensure_thread()

    def drop(self, flight: Flight) -> None:
        with self._lock:
            self._flights.pop(flight.rid, None)

    def held(self) -> list[Flight]:
        with self._lock:
            return list(self._flights.values())

    def _ensure_thread(self) -> None:
        """Started by the first request, in the process that serves it (a thread does not survive a fork)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except redis.RedisError as exc:
                log.warning("could not renew %d leases: %s", len(self._flights), exc)
            except Exception:  # the thread must outlive a bug, or every generation of this process stops
                log.exception("lease renewal failed")

    def renew(self) -> int:
        """One round: renew every lease whose client is there, drop those whose client hung up. Returns
        how many were renewed. A lease already gone (a cancel, a wiped Redis) is not brought back."""
        flights = self.held()
        if not flights:
            return 0
        expiry = self.expiry()
        pipe = self.redis.pipeline(transaction=False)
        renewed = 0
        per_key: set[str] = set()
        for flight in flights:
            lease = keys.lease(flight.job.request_id)
            if not flight.gone and flight.client is not None and hung_up(flight.client):
                log.info("request %s: the client hung up; cancelling its generation", flight.rid)
                flight.gone = True
            if flight.gone:
                pipe.delete(lease)
                continue
            pipe.pexpire(lease, self.ttl_ms)
            pipe.zadd(keys.inflight(), {flight.rid: expiry}, xx=True)
            if flight.key_concurrency:
                pipe.zadd(keys.key_inflight(flight.key_concurrency), {flight.rid: expiry}, xx=True)
                per_key.add(flight.key_concurrency)
            renewed += 1
        if renewed:
            pipe.pexpire(keys.inflight(), self.ttl_ms + 60_000)
        for name in per_key:
            pipe.pexpire(keys.key_inflight(name), self.ttl_ms + 60_000)
        pipe.execute()
        return renewed
