"""Recent traffic for the status page: completion requests and time to first token of the last minutes.

Prometheus keeps the long history; this is the short one, without Prometheus. Each API replica runs several
gunicorn processes, so an in-process buffer would show one process's share: every process adds its counts to
one Redis hash per SLICE_S-second slice instead (HINCRBY, summed across replicas by Redis itself), and the
hashes expire once older than the page looks back. Time to first token is kept as histogram buckets, the
same as the Prometheus histogram's, so the page's percentiles mean what Grafana's do.

Counts wait in the process up to FLUSH_S and ride on a round trip that goes anyway (a request's release,
see gateway.py); a thread writes those no release took. Written at once, they cost two round trips a
request, one of them between a stream's first token and its first chunk.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import redis

from services.common import buckets, keys

log = logging.getLogger(__name__)

SLICE_S = 10
WINDOW_S = 300
"""How far back the status page looks; slices are kept a little longer so a slow reader finds them."""
KEEP_S = WINDOW_S + 60
FLUSH_S = 1.0
"""The longest a count waits in its process before it reaches Redis."""
COUNTED_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
"""Generation requests only: the page's own polls of /v1/system/status must not count as traffic."""


def quantile(q: float, counts: Mapping[float, int], bounds: Sequence[float] = buckets.LATENCY) -> float | None:
    """As Prometheus's histogram_quantile: linear within the bucket that holds the q-th observation;
    one in the open-ended bucket answers the highest finite bound. None without observations."""
    total = sum(counts.values())
    if not total:
        return None
    rank, seen, lower = q * total, 0, 0.0
    for upper in bounds:
        n = counts.get(upper, 0)
        if n and seen + n >= rank:
            return lower + (upper - lower) * (rank - seen) / n
        seen, lower = seen + n, upper
    return bounds[-1]


def bucket_of(seconds: float, bounds: Sequence[float] = buckets.LATENCY) -> float:
    """The smallest bound at or above `seconds` (math.inf above them all), Prometheus's `le`."""
    return next((b for b in bounds if seconds <= b), math.inf)


class RecentTraffic:
    """Counts in the process until a round trip takes them (`ride`) or FLUSH_S passes; a Redis error is
    logged and the counts dropped, since the status page must never fail a completion."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time, flush_s: float = FLUSH_S) -> None:
        self.redis = client
        self.clock = clock
        self.flush_s = flush_s
        self._pending: dict[int, dict[str, float]] = {}
        """slice start -> field -> amount not yet in Redis"""
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._thread: threading.Thread | None = None

    def _add(self, fields: Mapping[str, float]) -> None:
        start = int(self.clock()) // SLICE_S * SLICE_S
        with self._lock:
            counts = self._pending.setdefault(start, {})
            for name, amount in fields.items():
                counts[name] = counts.get(name, 0) + amount
            if self._thread is None:  # started here, after gunicorn's fork
                self._thread = threading.Thread(target=self._run, name="traffic-flush", daemon=True)
                self._thread.start()
        self._due.set()

    def ride(self, pipe: redis.client.Pipeline) -> None:
        """Add the pending counts to `pipe`, which the caller executes."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._due.clear()
        for start, counts in pending.items():
            key = keys.traffic(start)
            for name, amount in counts.items():
                if isinstance(amount, int):
                    pipe.hincrby(key, name, amount)
                else:
                    pipe.hincrbyfloat(key, name, amount)
            pipe.expire(key, KEEP_S)

    def flush(self) -> None:
        """Write the pending counts now."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            self.ride(pipe)
            if pipe.command_stack:
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("recent traffic not recorded, Redis did not answer: %s", exc)

    def _run(self) -> None:
        """Write what no release took, FLUSH_S after it was counted; asleep while nothing is pending."""
        while True:
            self._due.wait()
            time.sleep(self.flush_s)
            if self._due.is_set():
                self.flush()

    def request(self, route: str, status: int) -> None:
        if route in COUNTED_ROUTES:
            self._add({"requests": 1, "errors": int(status >= 500)})

    def first_token(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._add({"ttft_count": 1, "ttft_sum": seconds, f"ttft_le_{bucket_of(seconds):g}": 1})

    def summary(self, window_s: int = WINDOW_S) -> dict:
        """Per-slice series, oldest first, and totals over the last minute and the whole window; the
        current slice is partial, so rates divide by the time actually covered. Other processes' counts
        show within FLUSH_S."""
        self.flush()
        now = self.clock()
        current = int(now) // SLICE_S * SLICE_S
        starts = list(range(current - window_s + SLICE_S, current + SLICE_S, SLICE_S))
        pipe = self.redis.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(keys.traffic(start))
        series = [_slice(start, raw) for start, raw in zip(starts, pipe.execute(), strict=True)]
        partial = now - current
        return {
            "slice_seconds": SLICE_S,
            "last_minute": _totals(series[-(60 // SLICE_S) :], 60 - SLICE_S + partial),
            "window": _totals(series, window_s - SLICE_S + partial),
            "series": [{k: v for k, v in s.items() if k != "buckets"} for s in series],
        }


def _slice(start: int, raw: Mapping[bytes | str, bytes | str]) -> dict:
    fields = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
    counts = {float(name.removeprefix("ttft_le_")): int(n) for name, n in fields.items() if name.startswith("ttft_le_")}
    ttft_count = int(fields.get("ttft_count", 0))
    return {
        "start": start,
        "requests": int(fields.get("requests", 0)),
        "errors": int(fields.get("errors", 0)),
        "ttft_count": ttft_count,
        "ttft_mean": fields.get("ttft_sum", 0.0) / ttft_count if ttft_count else None,
        "buckets": counts,
    }


def _totals(series: Sequence[dict], seconds: float) -> dict:
    counts: dict[float, int] = {}
    for s in series:
        for bound, n in s["buckets"].items():
            counts[bound] = counts.get(bound, 0) + n
    requests = sum(s["requests"] for s in series)
    ttft_count = sum(s["ttft_count"] for s in series)
    ttft_sum = sum((s["ttft_mean"] or 0.0) * s["ttft_count"] for s in series)
    return {
        "seconds": round(seconds, 1),
        "requests": requests,
        "errors": sum(s["errors"] for s in series),
        "requests_per_second": requests / seconds if seconds > 0 else 0.0,
        "ttft": {
            "count": ttft_count,
            "mean": ttft_sum / ttft_count if ttft_count else None,
            "p50": quantile(0.5, counts),
            "p95": quantile(0.95, counts),
        },
    }
