"""Writes one request's events to its Redis Stream and answers whether anyone still waits for them."""

from __future__ import annotations

import contextlib
import time

import redis

from services.common import events, keys
from services.worker.append import Prelude, append
from services.worker.flusher import DeltaFlusher, FlushFailed

CANCEL_POLL_S = 0.1
"""How stale a lease check may be. The flusher renews it with a batch one hold (at most
flusher.MAX_HOLD, half of this) before that, so while tokens flow a slot needs no round trip of its own."""


class NotWanted(Exception):
    """Raised from a deferred start (`defer_start`) when nobody waits for the job any more."""


class StreamPublisher:
    """Bound to one request: XADD events, EXPIRE the stream, poll the lease at most every 100 ms.

    Every write sets the TTL with its XADD, atomically (append.py) and in one round trip: the API deletes
    the stream when its client is done, and an XADD that lands after that (a token in flight at a
    disconnect) re-creates the key, which must then expire on its own rather than live forever.

    With a flusher, `delta()` writes the first token at once and hands later ones to the flusher, whose
    batches also bring back the lease: while tokens flow, `cancelled()` costs no round trip of its own.
    """

    def __init__(
        self,
        client: redis.Redis,
        request_id: str,
        ttl: int,
        deadline: float,
        *,
        flusher: DeltaFlusher | None = None,
    ) -> None:
        self.redis = client
        self.key = keys.stream(request_id)
        self.lease_key = keys.lease(request_id)
        self.ttl = ttl
        self.deadline = deadline
        self.flusher = flusher
        self.pending_pieces: list[str] = []
        self.pending_tokens = 0
        """Text and tokens waiting for the flusher (guarded by its lock)."""
        self.failed: FlushFailed | None = None
        """Set by the flusher when a batch with our tokens was lost."""
        self._first = True
        self._deferred: tuple[events.Started, Prelude | None] | None = None
        """A start to write at the engine's first wait (defer_start)."""
        self._waits_told = False
        """The engine calls before_wait: it says when pending deltas are to be written."""
        self._checked_at = 0.0
        self._cancelled = False

    def publish(self, event: events.Event) -> None:
        """Write `event` now; with a flusher, after the deltas still pending (and a deferred start)."""
        if self._deferred is not None:  # the engine failed before its first wait: `started` still comes first
            started, prelude = self._take_deferred()
            self._write(started, check_lease=True, prelude=prelude)
        if not isinstance(event, events.Failed):
            self._raise_if_failed()  # no `done` after lost tokens: the runner turns this into an error
        self._write(event)

    def start(self, event: events.Started, prelude: Prelude | None = None) -> bool:
        """Write `started` and read the lease in one round trip; False (skip the job) when nobody waits.
        A job whose client left meanwhile leaves a `started` in a stream that expires on its own.
        `prelude` adds its commands to that round trip (not called when the deadline has passed)."""
        if time.time() > self.deadline:
            self._cancelled = True
            return False
        self._write(event, check_lease=True, prelude=prelude)
        return not self._cancelled

    def defer_start(self, event: events.Started, prelude: Prelude | None = None) -> bool:
        """`start`, but at the engine's first `before_wait`: a sidecar then reads the prompt while `started`
        and the lease go over the network. False (skip the job) when its deadline has passed already; a
        lease found gone there raises NotWanted out of the engine."""
        if time.time() > self.deadline:
            self._cancelled = True
            return False
        self._deferred = (event, prelude)
        return True

    def _take_deferred(self) -> tuple[events.Started, Prelude | None]:
        assert self._deferred is not None
        deferred, self._deferred = self._deferred, None
        return deferred

    def _write(self, event: events.Event, *, check_lease: bool = False, prelude: Prelude | None = None) -> None:
        """XADD with its EXPIRE in one command (through the flusher when there is one), reading the
        lease in the same round trip when asked; in a MULTI with `prelude`'s commands."""
        if self.flusher is not None:
            self.flusher.send(self, event, check_lease=check_lease, prelude=prelude)
            return
        pipe = self.redis.pipeline(transaction=prelude is not None)
        if prelude is not None:
            prelude(pipe)
        append(pipe, self.key, self.lease_key, self.ttl, (event,), check_lease=check_lease)
        reply = pipe.execute()[-1]
        if check_lease:
            self.lease_seen(reply == 1, time.monotonic())

    def delta(
        self,
        text: str,
        tokens: int,
        *,
        tool_calls: tuple[dict, ...] | None = None,
        logprobs: tuple[dict, ...] | None = None,
    ) -> None:
        """Generated text: the first delta goes at once (time to first token), later ones at the next flush.
        One with tool calls or logprobs goes at once too: batching joins texts, which would lose their places."""
        if self.flusher is None or self._first or self.flusher.interval <= 0 or tool_calls or logprobs:
            self._first = False
            self.publish(events.Delta(text, tokens, tool_calls=tool_calls, logprobs=logprobs))
            return
        self._raise_if_failed()
        self.flusher.add(self, text, tokens, wake=not self._waits_told)

    def before_wait(self, sleeping: bool) -> None:
        """The engine is about to wait for more output (GenerationRequest.before_wait): before a tick's
        sleep, write what the flusher holds now, from this warm thread; before a wait for data as it
        comes, let the flusher's thread write it within its hold. From the first call on, our deltas do
        not wake that thread themselves. A lost batch fails the requests whose tokens were in it, each
        from its own slot, as in the flusher's thread."""
        if self._deferred is not None and not self.start(*self._take_deferred()):
            raise NotWanted(f"nobody waits for {self.key} any more")
        if self.flusher is None:
            return
        self._waits_told = True
        if not sleeping:
            self.flusher.kick()
            return
        with contextlib.suppress(FlushFailed):
            self.flusher.flush()
        self._raise_if_failed()

    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._checked_at >= CANCEL_POLL_S:
            self._checked_at = now
            self._cancelled = time.time() > self.deadline or not self.redis.exists(self.lease_key)
        return self._cancelled

    @property
    def seen_cancelled(self) -> bool:
        """What the last check found, without a new one (no Redis read): the engine stopped because of it."""
        return self._cancelled

    def lease_due(self, now: float, hold: float) -> bool:
        """Whether a batch written now should check our lease: the next may come `hold` later."""
        return not self._cancelled and now - self._checked_at >= CANCEL_POLL_S - hold

    def lease_seen(self, alive: bool, at: float) -> None:
        """The flusher checked the lease with a batch: no need to ask Redis again for CANCEL_POLL_S."""
        self._checked_at = at
        if not alive or time.time() > self.deadline:
            self._cancelled = True

    def _raise_if_failed(self) -> None:
        if self.failed is not None:
            raise self.failed
