"""Batches the token deltas of every slot of a worker into one Redis pipeline every few milliseconds.

One XADD per token made the gateway's cost per request grow with its length (a round trip, a MULTI/EXEC
and a reader wake-up per token). Here slots only hand their text over (a lock and an append); one
thread writes what all of them produced since the last flush in one pipeline (one atomic append per
stream, append.py), and checks their leases in the same round trip. Events that must not wait (a
request's first token, `started`, `done`, `error`) are written at once by the slot's own thread,
together with everything pending, so a stream's events always land in the order they were produced.

The hold adapts to the engine's pace. A CPU llama-server emits a token every ~15 ms, so a 10 ms
flush held one token: every token still cost a pipeline, a Redis write, an API wake-up and a write to
nginx (~1.8 ms of gateway CPU per token on 2 cores). While batches carry fewer than BATCH_TOKENS
tokens per stream the hold doubles, up to MAX_HOLD; when they carry many (a fast GPU engine) it
halves back towards the interval. The first token still goes at once, the last with `done`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import redis

from services.common import events
from services.common.errors import ServiceUnavailable
from services.worker.append import Prelude, append

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.01
"""Seconds a delta may wait for others (STREAM_FLUSH_MS; 0: none, every delta is written at once):
below what a reader can see, long enough that a fast engine's tokens and the slots of one worker
share a write."""


MAX_HOLD = 0.05
"""The longest a batched token waits (seconds): far below what a reader notices, and long enough that
a slow engine's tokens share a write (three or four at 15 ms a token)."""

BATCH_TOKENS = 4
"""Tokens per stream a batch should carry before the hold stops growing."""


class FlushFailed(ServiceUnavailable):
    """Redis refused a batch: the tokens in it are lost, so their requests must end in an error."""


class PendingStream(Protocol):
    """What the flusher needs of a stream's publisher (publisher.py, which builds on this module): where its
    events go, the text it left pending, and how its lease checks ride on a batch."""

    key: str
    lease_key: str
    ttl: int
    pending_pieces: list[str]
    pending_tokens: int
    failed: FlushFailed | None

    def lease_due(self, now: float, hold: float) -> bool: ...

    def lease_seen(self, alive: bool, at: float) -> None: ...


class DeltaFlusher:
    """Shared by the slots of a worker process; its thread starts with the first batched delta."""

    def __init__(self, client: redis.Redis, *, interval: float = DEFAULT_INTERVAL, max_hold: float = MAX_HOLD) -> None:
        self.redis = client
        self.interval = interval
        self.max_hold = max(interval, max_hold)
        self.hold = interval
        """How long the thread lets a batch gather now: from `interval` up to `max_hold` (see _adapt)."""
        self.flushes = 0
        """Pipelines written (for tests and benchmarks)."""
        self._lock = threading.Lock()  # pending text of every publisher, and which have some
        self._write = threading.Lock()  # one writer at a time: a stream's events land in order
        self._dirty: dict[str, PendingStream] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, out: PendingStream, text: str, tokens: int, *, wake: bool = True) -> None:
        """Queue a chunk for the next flush; without `wake` the caller flushes, or kicks, later itself."""
        with self._lock:
            if text:
                out.pending_pieces.append(text)
            out.pending_tokens += tokens
            if wake and not self._wake.is_set():
                self._wake.set()
            self._dirty[out.key] = out
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="delta-flusher", daemon=True)
                self._thread.start()

    def kick(self) -> None:
        """Have the thread write what is pending within its hold (deltas added without `wake`)."""
        with self._lock:
            if self._dirty:
                self._wake.set()

    def send(
        self, out: PendingStream, event: events.Event, *, check_lease: bool = False, prelude: Prelude | None = None
    ) -> None:
        """Write `event` now, after everything pending (its own stream's deltas first of all);
        `check_lease` reads the stream's lease in the same round trip (a job's `started`), to which
        `prelude` adds its commands."""
        with self._write:
            self._flush((out, event), check_lease=check_lease, prelude=prelude)

    def flush(self) -> float | None:
        """Write what is pending now (the thread does it every hold; tests and close() call it); the
        batch's tokens per stream, None when nothing was pending."""
        with self._write:
            return self._flush(None)

    def close(self) -> None:
        """Write what is left and end the thread; later deltas are written at once, unbatched."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            time.sleep(self.hold)  # let the slots add to this batch
            try:
                self._adapt(self.flush())
            except FlushFailed as exc:
                log.warning("batched deltas lost: %s", exc.__cause__)  # each request raises it from its slot

    def _adapt(self, per_stream: float | None) -> None:
        """Stretch the hold while batches are thin (slow tokens), shrink it while they are thick."""
        if per_stream is None:
            return
        if per_stream < BATCH_TOKENS:
            self.hold = min(self.max_hold, self.hold * 2)
        elif per_stream > 2 * BATCH_TOKENS:
            self.hold = max(self.interval, self.hold / 2)

    def _take(self) -> list[tuple[PendingStream, events.Delta]]:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            self._wake.clear()
            batch = []
            for out in dirty.values():
                pieces, tokens = out.pending_pieces, out.pending_tokens
                out.pending_pieces, out.pending_tokens = [], 0
                batch.append((out, events.Delta("".join(pieces), tokens, tuple(pieces) if len(pieces) > 1 else None)))
            return batch

    def _flush(
        self,
        now: tuple[PendingStream, events.Event] | None,
        *,
        check_lease: bool = False,
        prelude: Prelude | None = None,
    ) -> float | None:
        """Write the batch (and `now`); returns the batch's tokens per stream, None when it had none."""
        batch = self._take()
        if not batch and now is None:
            return None
        pipe = self.redis.pipeline(transaction=prelude is not None)  # each append is atomic on its own
        if prelude is not None:
            prelude(pipe)
        checked = time.monotonic()
        writes: dict[str, tuple[PendingStream, list[events.Event], bool]] = {}
        tokens = 0
        for out, delta in batch:
            tokens += delta.tokens
            # the next batch may come from a slot, in a tick: check the lease now if it would be stale by then
            writes[out.key] = (out, [delta], out.lease_due(checked, self.max_hold))
        if now is not None:  # after its own stream's pending deltas, in the same command
            out, event = now
            _, written, check = writes.get(out.key, (out, [], False))
            writes[out.key] = (out, [*written, event], check or check_lease)
        first = len(pipe.command_stack)
        for out, written, check in writes.values():
            append(pipe, out.key, out.lease_key, out.ttl, written, check_lease=check)
        try:
            results = pipe.execute()
        except redis.RedisError as exc:
            failed = FlushFailed(f"The queue (Redis) lost part of the answer ({type(exc).__name__}); please retry.")
            for out, _ in batch:
                out.failed = failed
            if now is not None:
                raise  # the slot's own event: its runner handles a Redis error as it always did
            raise failed from exc
        self.flushes += 1
        for (out, _, check), reply in zip(writes.values(), results[first:], strict=True):
            if check:
                out.lease_seen(reply == 1, checked)
        return tokens / len(batch) if batch else None
