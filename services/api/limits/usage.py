"""Usage per API key: requests, prompt and completion tokens per key per UTC day, kept in Redis.

Counted by the API when a request's `done` event arrives (HINCRBY in the release's round trip), so every
replica adds to the same day's hash; the hash expires USAGE_RETENTION_DAYS after its day. Read by the admin
route GET /v1/usage?date=YYYY-MM-DD and exported to Prometheus by key NAME (never the key), as counters
that restart each UTC day (rate() and increase() take such a reset in stride).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime

import falcon
import redis
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from redis.client import Pipeline

from services.common import keys
from services.common.errors import InvalidRequest, clip
from services.common.events import Usage

log = logging.getLogger(__name__)
FIELDS = ("requests", "prompt_tokens", "completion_tokens")
HELP = {"requests": "Finished requests", "prompt_tokens": "Prompt tokens", "completion_tokens": "Completion tokens"}


def today() -> str:
    return datetime.now(UTC).date().isoformat()


class UsageBook:
    def __init__(self, client: redis.Redis, *, retention_days: int, clock: Callable[[], str] = today) -> None:
        self.redis = client
        self.ttl_s = retention_days * 86_400 + 86_400  # the day itself, then the retention
        self.clock = clock

    def record(self, pipe: Pipeline, key_name: str, usage: Usage, *, request: bool = True, prompt: bool = True) -> None:
        """Add one finished job of `key_name` to today's hash (in the caller's round trip). A fanned-out
        request's further choices add their completion tokens only (`request`, `prompt` false: see Job)."""
        day = keys.usage(self.clock())
        pipe.hincrby(day, f"{key_name}|requests", int(request))
        pipe.hincrby(day, f"{key_name}|prompt_tokens", usage.prompt_tokens if prompt else 0)
        pipe.hincrby(day, f"{key_name}|completion_tokens", usage.completion_tokens)
        pipe.expire(day, self.ttl_s)

    def day(self, day: str | None = None) -> dict[str, dict[str, int]]:
        """key name -> {requests, prompt_tokens, completion_tokens} for one day (default today)."""
        out: dict[str, dict[str, int]] = {}
        for field, value in self.redis.hgetall(keys.usage(day or self.clock())).items():
            name, _, what = (field.decode() if isinstance(field, bytes) else field).rpartition("|")
            if what in FIELDS:
                out.setdefault(name, dict.fromkeys(FIELDS, 0))[what] = int(value)
        return out


class UsageResource:
    """GET /v1/usage?date=YYYY-MM-DD: one day's usage per key (an admin route, see access.py)."""

    def __init__(self, book: UsageBook) -> None:
        self.book = book

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        day = req.get_param("date") or self.book.clock()
        try:
            day = date.fromisoformat(day).isoformat()
        except ValueError:
            raise InvalidRequest(f"date {clip(day)!r} is not YYYY-MM-DD.", param="date", code="invalid_date") from None
        rows = self.book.day(day)
        resp.media = {
            "object": "list",
            "date": day,
            "data": [
                {"object": "usage", "key": name, **n, "total_tokens": n["prompt_tokens"] + n["completion_tokens"]}
                for name, n in sorted(rows.items())
            ],
        }


class UsageCollector(Collector):
    """Today's usage per key name, read from Redis at scrape time (every replica reports the same values:
    take `max by (key)` across replicas)."""

    def __init__(self, book: UsageBook) -> None:
        self.book = book

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            rows = self.book.day()
        except redis.RedisError as exc:
            log.warning("usage per key skipped, Redis did not answer: %s", exc)
            return
        families = {
            what: CounterMetricFamily(
                f"api_key_{what}", f"{HELP[what]} per API key name, today (UTC).", labels=("key",)
            )
            for what in FIELDS
        }
        for name, counts in sorted(rows.items()):
            for what, family in families.items():
                family.add_metric((name,), counts[what])
        yield from families.values()
