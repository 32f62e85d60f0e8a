"""The API's side of the queue: admit and enqueue a request, read its events, keep it alive, let it go.

Streaming and non-streaming both read the same events with XREAD BLOCK; `None` in the event iterator is
a quiet tick (no event for SSE_KEEPALIVE seconds) on which the client, the worker and the job itself
are checked, so that nothing waits on something dead: a client that hung up ends the request, a worker
that died mid-generation is a 503, and a job lost before it started is enqueued once more.

With `wait_for_worker_s` (WAIT_FOR_WORKER_S) a request for a catalog model that no worker serves is queued
anyway and waits that long for one: its job in the model's queue is what wakes a pool scaled to zero (KEDA
on the list's length), and the request is answered by the worker that starts, or ends in the same 503
`model_not_loaded` as without the wait (its job taken off the queue and its lease dropped, so a worker that
starts later skips it).

A catalog model that no worker serves but an on-demand worker can load (services/worker/demand.py) waits the same
way, up to MODEL_LOAD_WAIT_S: the job in its queue is what makes that worker load it. A load that fails ends the
waiting requests at their next check with the worker's reason (503 `model_load_failed`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import redis

from services.api.observability.traffic import RecentTraffic
from services.api.pipeline.admission import Admission
from services.api.pipeline.jobqueue import JobQueue
from services.api.pipeline.leases import Flight, LeaseKeeper
from services.api.pipeline.queue_wait import SERVICE_SAMPLES, TICK_S, QueueWait, estimate
from services.api.pipeline.stream_reader import StreamReader
from services.common import events, keys
from services.common.errors import ClientGone, GatewayTimeout, ServiceUnavailable
from services.common.jobs import MAX_ATTEMPTS, Job
from services.common.registry import Registry, by_model
from services.keys.store import ApiKey

log = logging.getLogger(__name__)
RIDE_OUT_S = 15.0
"""How long a request whose job is still queued waits for an unreachable Redis to come back, as after a Sentinel
failover (about 5 s measured: tests/e2e/stack/test_redis_failover.py), before it fails with a 503; the job was
replicated with its enqueue, or is found gone and enqueued again (`_lost`). A request that has read an event
fails at once: its stream on the new master may lack what the old one had not yet replicated, and text with a
hole in it must never reach a client as a whole answer."""
RIDE_OUT_TICK_S = 0.5
STRANDED_TICKS = 2
"""Quiet ticks a dequeued job may sit in RQ's intermediate list before it counts as lost: a live worker
moves it on within milliseconds, one that died between BLMOVE and start never does."""


class Gateway:
    def __init__(
        self,
        client: redis.Redis,
        registry: Registry,
        *,
        stream_ttl: int,
        keepalive: float,
        lease_ttl: float = 10.0,
        admission: Admission | None = None,
        registry_cache_s: float = 1.0,
        traffic: RecentTraffic | None = None,
        wait_for_worker_s: float = 0.0,
        model_load_wait_s: float = 0.0,
    ) -> None:
        self.redis = client
        self.registry = registry
        self.stream_ttl = stream_ttl
        self.keepalive = keepalive
        self.jobs = JobQueue(client, stream_ttl=stream_ttl)
        self.leases = LeaseKeeper(client, ttl=lease_ttl)
        self.admission = admission or Admission(client, max_inflight=100, max_queue_depth=256)
        self._cache_s = registry_cache_s
        self.traffic = traffic
        """The status page's counts, which ride on each release's round trip."""
        self._serving: dict[str, list] = {}
        self._loaders: dict[str, list] = {}
        self._serving_at = 0.0
        self.model_load_wait_s = model_load_wait_s
        """How long a request may wait for an on-demand worker to load its model."""
        self.wait_for_worker_s = wait_for_worker_s
        """How long a request may wait in the queue for a worker of its model to appear (0: refused at once)."""
        self._served: dict[str, tuple[str, float]] = {}
        """request id -> (model, service seconds) of a finished job, pushed to Redis with its release."""

    def serving(self, fresh: bool = False) -> dict[str, list]:
        """model id -> live workers, cached for a second so a burst of requests costs one read."""
        now = time.monotonic()
        if fresh or now - self._serving_at > self._cache_s:
            live = self.registry.live()  # one read for both maps
            self._serving = by_model(live, lambda rec: rec.models)
            self._loaders = by_model(live, lambda rec: rec.can_serve if rec.on_demand else ())
            self._serving_at = now
        return self._serving

    def loadable(self, fresh: bool = False) -> dict[str, list]:
        """model id -> live on-demand workers that would load it for a request (services/worker/demand.py)."""
        self.serving(fresh)
        return self._loaders

    def may_wait(self, model_id: str, fresh: bool = False) -> float:
        """Seconds a request for a model no worker serves may wait for one: WAIT_FOR_WORKER_S, or
        MODEL_LOAD_WAIT_S when an on-demand worker can load it; 0: refused at once."""
        self.serving(fresh)
        loadable = self.model_load_wait_s if self._loaders.get(model_id) else 0.0
        return max(self.wait_for_worker_s, loadable)

    def require_worker(self, model_id: str) -> None:
        """503 before anything is queued when no worker serves the model, unless requests may wait for one."""
        if self.serving().get(model_id) or self.may_wait(model_id) > 0:
            return
        if not self.serving(fresh=True).get(model_id) and not self.may_wait(model_id):
            raise not_loaded(f"No worker is serving the model '{model_id}' right now; retry shortly.")

    def queued(self, model_id: str) -> int:
        return self.jobs.queued(model_id)

    def submit(self, job: Job, client: socket.socket | None = None, key: ApiKey | None = None) -> Flight:
        """Admit, take the lease and enqueue in one round trip (429 if not admitted); from then on this
        process renews the lease while the client is there. `key`: the caller's, for its limits."""
        admitted = self.admission.admit(
            job.request_id,
            job,
            queue_key=self.jobs.queue(job.model).key,
            enqueue=self.jobs.enqueue_commands(job),
            lease_ttl=self.leases.ttl,
            key=key,
        )
        flight = Flight(job.request_id, job, client, admitted=admitted)
        self.leases.hold(flight)
        return flight

    def events(self, flight: Flight, wait: QueueWait | None = None) -> Iterator[tuple[str, events.Event] | None]:
        """(stream id, event) pairs until `done`/`error`; None on quiet ticks. Raises 504 at the deadline.
        `wait` learns the dequeue time; one that reports hears, every TICK_S while queued, where it stands.
        The reads hold one connection until the events end or the caller closes the iterator."""
        reader = StreamReader(self.redis)
        try:
            yield from self._events(flight, wait, reader)
        finally:
            reader.close()

    def _events(
        self, flight: Flight, wait: QueueWait | None, reader: StreamReader
    ) -> Iterator[tuple[str, events.Event] | None]:
        """The events, riding out a Redis that fails over while the job waits in the queue (RIDE_OUT_S)."""
        outage: float | None = None
        inner = self._events_once(flight, wait, reader)
        while True:
            try:
                item = next(inner)
            except StopIteration:
                return
            except redis.ConnectionError:
                if flight.started:
                    raise
                outage = outage or time.monotonic()
                if time.monotonic() - outage > RIDE_OUT_S:
                    raise
                log.warning("request %s: Redis unreachable while queued; waiting for it", flight.rid)
                reader.close()
                time.sleep(RIDE_OUT_TICK_S)
                inner = self._events_once(flight, wait, reader)  # from the stream's start, on the master now
                yield None
                continue
            outage = None
            yield item

    def _events_once(
        self, flight: Flight, wait: QueueWait | None, reader: StreamReader
    ) -> Iterator[tuple[str, events.Event] | None]:
        job = flight.job
        last, seen, worker = "0-0", 0, None
        checked = time.monotonic()
        # when a wait for a worker would run out: the liveness check then runs on that tick, not up to a
        # keep-alive later (attempts keep accepted_at, so a retry does not restart the wait)
        allowed = self.may_wait(job.model)
        wait_ends = job.accepted_at + allowed if allowed > 0 else None
        while True:
            if flight.job is not job:  # retried: read the new attempt's stream from its start
                job, last, seen, worker = flight.job, "0-0", 0, None
            remaining = job.deadline - time.time()
            if remaining <= 0:
                raise GatewayTimeout(f"The request timed out after {job.deadline - job.accepted_at:.0f} seconds.")
            tick = TICK_S if wait is not None and wait.report and worker is None else self.keepalive
            if wait_ends is not None and worker is None:
                tick = min(tick, max(0.001, wait_ends - time.time()))
            block = max(1, int(min(remaining, self.keepalive, tick) * 1000))
            entries = reader.read(keys.stream(job.request_id), last, block_ms=block, count=256)
            if not entries:
                # liveness every keep-alive, as without queue ticks (a dequeued job's grace is STRANDED_TICKS of
                # them), and once when a wait for a worker runs out; a hang-up is seen on every tick
                due = wait_ends is not None and worker is None and time.time() >= wait_ends
                if due or time.monotonic() - checked >= self.keepalive * 0.9 or tick >= self.keepalive:
                    wait_ends = None if due else wait_ends
                    self._check_alive(flight, worker, seen)
                    checked = time.monotonic()
                elif flight.gone:
                    raise ClientGone("The client closed the connection.")
                if wait is not None and wait.report and worker is None:
                    self._locate(job, wait)
                yield None
                continue
            for last, fields in entries:
                seen += 1
                flight.started = True  # from here a lost connection fails the request (RIDE_OUT_S says why)
                event = events.decode(fields)
                if isinstance(event, events.Started):
                    worker = event.worker
                    if wait is not None:
                        wait.started(event.dequeued_at)
                elif isinstance(event, events.Done) and "dequeued" in event.timings and "done" in event.timings:
                    self._served[flight.rid] = (job.model, event.timings["done"] - event.timings["dequeued"])
                if isinstance(event, events.Done):
                    flight.usage = event.usage  # the key's usage and TPM, counted at release (admission.py)
                if isinstance(event, events.Done) and time.time() > job.deadline:
                    raise GatewayTimeout(  # the worker stopped at the deadline: a cut-off answer is no answer
                        f"The request timed out after {job.deadline - job.accepted_at:.0f} seconds."
                    )
                yield last, event
                if isinstance(event, events.Done | events.Failed):
                    return

    def _locate(self, job: Job, wait: QueueWait) -> None:
        """Position in the model's RQ queue (LPOS; RQ pops from the head) and the wait it means, in one read."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpos(self.jobs.queue(job.model).key, job.request_id)
        pipe.lrange(keys.service_times(job.model), 0, SERVICE_SAMPLES - 1)
        index, samples = pipe.execute()
        wait.position = None if index is None else int(index) + 1
        slots = sum(w.slots for w in self.serving().get(job.model, []))
        times = [float(s) for s in samples]
        wait.eta_s = None if wait.position is None else estimate(wait.position, times, slots)

    def _check_alive(self, flight: Flight, worker: str | None, seen: int) -> None:
        """A request must not hang on something dead: its client, its worker, or a job nobody runs."""
        if flight.gone:
            raise ClientGone("The client closed the connection.")
        if worker is not None:
            if all(w.id != worker for w in self.registry.live()):
                raise ServiceUnavailable("The worker serving this request stopped; please retry.", code="worker_lost")
            return
        if not self.serving(fresh=True).get(flight.job.model):
            model = flight.job.model
            waited = time.time() - flight.job.accepted_at
            allowed = self.may_wait(model)
            if allowed <= 0:
                raise not_loaded(f"No worker is serving the model '{model}' any more; please retry.")
            failed = self.redis.get(keys.load_failed(model))
            if failed:
                reason = failed.decode() if isinstance(failed, bytes) else failed
                raise ServiceUnavailable(f"Loading the model '{model}' failed: {reason}", code="model_load_failed")
            if waited >= allowed:
                raise not_loaded(f"No worker started serving the model '{model}' within {allowed:g} s; retry shortly.")
            # waiting for a worker to start: a job a worker took and then died with is still retried below
        lost = self._lost(flight, seen)
        if lost:
            self._retry(flight, lost)

    def _lost(self, flight: Flight, seen: int) -> str | None:
        """Why the job will never start, or None: it is queued, running, or its events are on the way."""
        state = self.jobs.state(flight.job)
        if state.stream_len > seen:
            return None
        if state.status is None:
            return "its RQ job is gone"
        if state.status in ("failed", "stopped", "canceled"):
            return f"its RQ job is {state.status}"
        if state.status == "started":  # RQ workers of a slot are named "<worker id>.<model>.<slot>.<n>" (slots.py)
            live = self.registry.live()
            if not any(state.worker_name.startswith(f"{w.id}.") for w in live):
                return f"the worker that took it ({state.worker_name}) is gone"
            return None
        if state.in_intermediate:
            flight.suspect += 1
            if flight.suspect >= STRANDED_TICKS:
                return "a worker dequeued it and never started it"
            return None
        flight.suspect = 0
        return None

    def _retry(self, flight: Flight, why: str) -> None:
        """Enqueue the next attempt under its own keys; the lost attempt's lease goes in the same round trip."""
        lost = flight.job
        if lost.attempt >= MAX_ATTEMPTS:
            log.warning("request %s: attempt %d lost before it started (%s); giving up", flight.rid, lost.attempt, why)
            raise ServiceUnavailable(
                "The request was lost twice before a worker started it; please retry.", code="worker_lost"
            )
        job = lost.next_attempt(flight.rid)
        pipe = self.redis.pipeline(transaction=True)
        self.jobs.enqueue(job, pipe)
        pipe.set(keys.lease(job.request_id), job.attempt, px=self.leases.ttl_ms)
        pipe.delete(keys.lease(lost.request_id))
        pipe.lrem(self.jobs.queue(lost.model).intermediate_queue_key, 0, lost.request_id)
        pipe.execute()
        flight.job, flight.suspect = job, 0
        log.warning("request %s: attempt %d lost before it started (%s); enqueued attempt %d as %s",
                    flight.rid, lost.attempt, why, job.attempt, job.request_id)  # fmt: skip

    def release(self, flight: Flight, *, finished: bool) -> None:
        """Give back all the request holds in one round trip: its admission entry, lease and stream, and
        its job if still queued (a worker that already took it finds no lease and stops between tokens);
        the status page's pending counts ride along. Best effort: if Redis is down, the lease and the entry
        expire within LEASE_TTL anyway."""
        self.leases.drop(flight)
        job = flight.job
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(keys.inflight(), flight.rid)
            pipe.delete(keys.stream(job.request_id), keys.lease(job.request_id))
            served = self._served.pop(flight.rid, None)
            if served is not None:  # the estimate's sample rides on this round trip
                model, seconds = served
                pipe.lpush(keys.service_times(model), f"{max(0.0, seconds):.4f}")
                pipe.ltrim(keys.service_times(model), 0, SERVICE_SAMPLES - 1)
                pipe.expire(keys.service_times(model), 3600)
            if not finished:
                self.jobs.remove(job, pipe)
            self.admission.release(pipe, flight)
            if self.traffic is not None:
                self.traffic.ride(pipe)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not release %s: %s", flight.rid, exc)


def not_loaded(message: str) -> ServiceUnavailable:
    """The retryable 503 for a model no worker serves (Retry-After: 5)."""
    return ServiceUnavailable(message, param="model", code="model_not_loaded")
