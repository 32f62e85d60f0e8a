"""Per-key limits, fair share and usage against a real Redis, through the Gateway the API uses."""

from __future__ import annotations

import time

import pytest
from limits import RateLimitItemPerMinute
from rq import Queue

from services.api.limits.ratelimit import RateLimiter, duration
from services.api.limits.usage import UsageBook
from services.api.observability import queue_view
from services.api.pipeline.admission import Admission
from services.api.pipeline.gateway import Gateway
from services.common import keys
from services.common.errors import RateLimited
from services.common.events import Usage
from services.common.jobs import ChatMessage, Job, SamplingParams
from services.common.registry import Registry
from services.common.settings import Settings
from services.keys.store import ApiKey

pytestmark = pytest.mark.integration
MODEL = "fair-m"


def api_key(name: str, **limits) -> ApiKey:
    return ApiKey(name=name, sha256="0" * 64, shown="sk-xxxxx", **limits)


def job(rid: str, key: str | None, *, prompt: str = "p" * 40, max_tokens: int = 10) -> Job:
    now = time.time()
    return Job(
        request_id=rid,
        model=MODEL,
        kind="completion",
        prompt=prompt,
        params=SamplingParams(max_tokens=max_tokens),
        accepted_at=now,
        deadline=now + 30,
        key_name=key,
    )


class Clock:
    """The limiter's clock, which a test moves on together with the TTLs of the key's counters (`age`)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def gateway(client, *, fair: bool = True, clock: Clock | None = None, **settings) -> Gateway:
    cfg = Settings(**settings)
    limiter = RateLimiter(client, cfg, clock=clock or time.time)
    admission = Admission(
        client,
        max_inflight=1000,
        max_queue_depth=500,
        limiter=limiter,
        fair_share=fair,
        usage=UsageBook(client, retention_days=cfg.usage_retention_days),
    )
    return Gateway(client, Registry(client, 5), stream_ttl=60, keepalive=0.2, admission=admission)


def queue_ids(client) -> list[str]:
    return [i.decode() for i in client.lrange(Queue(keys.queue_name(MODEL), connection=client).key, 0, -1)]


@pytest.mark.parametrize("fair", [True, False])
def test_one_keys_flood_does_not_starve_anothers_request(redis_client, fair):
    gw = gateway(redis_client, fair=fair)
    a, b = api_key("team-a"), api_key("team-b")
    flights = [gw.submit(job(f"a{i}", "team-a"), key=a) for i in range(40)]
    assert [f.admitted.position for f in flights] == list(range(40)), "alone, a key's jobs keep their order"
    redis_client.lpop(Queue(keys.queue_name(MODEL), connection=redis_client).key)  # a worker took a0
    late = gw.submit(job("b0", "team-b"), key=b)
    order = queue_ids(redis_client)
    if fair:
        assert order.index("b0") == late.admitted.position == 1, "behind the head's tag only (one of A's)"
        assert order == ["a1", "b0", *[f"a{i}" for i in range(2, 40)]]
    else:
        assert order[-1] == "b0" and late.admitted.position == 39
    assert queue_view.waiting(redis_client, MODEL).by_key == {"team-a": 39, "team-b": 1}, "as /v1/system/status shows"


def test_round_robin_between_floods_and_priority_weights(redis_client):
    gw = gateway(redis_client)
    a, b, c = api_key("a"), api_key("b"), api_key("c", priority=2)
    for i in range(4):
        gw.submit(job(f"a{i}", "a"), key=a)
    for i in range(4):
        gw.submit(job(f"b{i}", "b"), key=b)
    assert queue_ids(redis_client) == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    for i in range(4):
        gw.submit(job(f"c{i}", "c"), key=c)
    order = queue_ids(redis_client)
    assert order.index("c1") < order.index("a1") and order.index("c3") < order.index("a3"), order


def test_release_forgets_tags_and_owners(redis_client):
    gw = gateway(redis_client)
    flight = gw.submit(job("x0", "a"), key=api_key("a"))
    assert redis_client.hexists(keys.fair(MODEL), "j:x0") and redis_client.hexists(keys.fair(MODEL), "o:x0")
    gw.release(flight, finished=False)
    assert not redis_client.hexists(keys.fair(MODEL), "j:x0") and not redis_client.hexists(keys.fair(MODEL), "o:x0")
    assert 0 < redis_client.pttl(keys.fair(MODEL)) <= 3_600_000


def test_concurrency_per_key_holds_and_lapses_with_the_lease(redis_client):
    gw = gateway(redis_client)
    gw.leases.ttl = 0.6
    key = api_key("few", concurrency=2)
    first = gw.submit(job("c0", "few"), key=key)
    gw.submit(job("c1", "few"), key=key)
    with pytest.raises(RateLimited) as info:
        gw.submit(job("c2", "few"), key=key)
    assert info.value.code == "concurrency_limit_exceeded" and info.value.headers["Retry-After"] == "1"
    assert not redis_client.exists(keys.lease("c2")), "a refused request takes nothing"
    gw.submit(job("o0", "other"), key=api_key("other", concurrency=1))
    gw.release(first, finished=True)
    gw.submit(job("c3", "few"), key=key)
    gw.leases.stop()
    time.sleep(0.3)
    gw.leases.renew()
    assert redis_client.zscore(keys.key_inflight("few"), "c3") > time.time() + 0.5, "renewed with the lease"
    time.sleep(0.8)  # no renewal: the entries of a dead replica fall out
    gw.submit(job("c4", "few"), key=key)


def test_rpm_is_refused_with_retry_after_and_openai_headers(redis_client):
    gw = gateway(redis_client)
    key = api_key("rpm3", rpm=3)
    quotas = [gw.submit(job(f"r{i}", "rpm3"), key=key).admitted.quota for i in range(3)]
    assert [q.headers()["x-ratelimit-remaining-requests"] for q in quotas] == ["2", "1", "0"]
    assert quotas[0].headers()["x-ratelimit-limit-requests"] == "3"
    assert "x-ratelimit-limit-tokens" not in quotas[0].headers(), "no TPM limit, no token headers"
    started = time.perf_counter()
    with pytest.raises(RateLimited) as info:
        gw.submit(job("r3", "rpm3"), key=key)
    refused_ms = (time.perf_counter() - started) * 1000
    err = info.value
    assert err.status == 429 and err.code == "rate_limit_exceeded" and "requests per min" in err.message
    assert 55 <= int(err.headers["Retry-After"]) <= 60, "when the oldest of the minute leaves"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"].endswith("s")
    assert not redis_client.exists(keys.lease("r3")) and "r3" not in queue_ids(redis_client)
    assert refused_ms < 500


def test_a_refusal_after_the_charge_gives_it_back(redis_client):
    gw = gateway(redis_client)
    key = api_key("both", rpm=10, tpm=1000, concurrency=1)
    gw.submit(job("t0", "both", max_tokens=90), key=key)  # 40 chars = 10 tokens + 90
    with pytest.raises(RateLimited):
        gw.submit(job("t1", "both"), key=key)  # concurrency
    peek = gw.admission.limiter.peek(gw.admission.limiter.limits_of(key)).headers()
    assert peek["x-ratelimit-remaining-requests"] == "9" and peek["x-ratelimit-remaining-tokens"] == "900"


def test_tpm_charges_the_estimate_then_the_tokens_used(redis_client):
    gw = gateway(redis_client)
    key = api_key("tok", tpm=500)
    flight = gw.submit(job("k0", "tok", max_tokens=200), key=key)  # 10 + 200
    assert flight.admitted.quota.headers()["x-ratelimit-remaining-tokens"] == "290"
    with pytest.raises(RateLimited) as info:
        gw.submit(job("k1", "tok", max_tokens=300), key=key)
    assert "tokens per min (TPM)" in info.value.message and int(info.value.headers["Retry-After"]) >= 1
    flight.usage = Usage(prompt_tokens=12, completion_tokens=30)
    gw.release(flight, finished=True)
    limiter = gw.admission.limiter
    assert limiter.peek(limiter.limits_of(key)).headers()["x-ratelimit-remaining-tokens"] == "458"
    gw.submit(job("k2", "tok", max_tokens=300), key=key)
    with pytest.raises(RateLimited) as info:
        gw.submit(job("k3", "tok", max_tokens=600), key=key)
    assert "too large" in info.value.message, "a request over the whole TPM can never pass"


def test_defaults_apply_to_keys_without_limits(redis_client):
    gw = gateway(redis_client, key_default_rpm=1)
    gw.submit(job("d0", "plain"), key=api_key("plain"))
    with pytest.raises(RateLimited):
        gw.submit(job("d1", "plain"), key=api_key("plain"))
    gw.submit(job("d2", None))  # no key, no limit


def test_usage_is_counted_per_key_per_day_on_release(redis_client):
    gw = gateway(redis_client)
    for i, (prompt, completion) in enumerate([(5, 7), (11, 13)]):
        flight = gw.submit(job(f"u{i}", "acct"), key=api_key("acct"))
        flight.usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
        gw.release(flight, finished=True)
    unfinished = gw.submit(job("u9", "acct"), key=api_key("acct"))
    gw.release(unfinished, finished=False)
    book = gw.admission.usage
    assert book.day() == {"acct": {"requests": 2, "prompt_tokens": 16, "completion_tokens": 20}}
    assert 35 * 86_400 < redis_client.ttl(keys.usage(book.clock())) <= 36 * 86_400


def test_durations_are_spelled_as_openai_does():
    assert [duration(s) for s in (0.02, 1.5, 6, 60, 361)] == ["20ms", "1.5s", "6s", "1m0s", "6m1s"]


def age(client, limiter: RateLimiter, key: ApiKey, clock: Clock, seconds: float) -> None:
    """`seconds` pass for the key's token counters (limits' two keys: the current window and the previous)
    and for the limiter's clock, without waiting for them."""
    storage, tpm = limiter.storage, limiter.limits_of(key).tpm
    item = RateLimitItemPerMinute(tpm).key_for("tokens", key.name)
    for name in (storage._current_window_key(item), storage._previous_window_key(item)):
        ttl = client.pttl(storage.prefixed_key(name))
        if ttl > 0:
            left = ttl - int(seconds * 1000)
            client.pexpire(storage.prefixed_key(name), left) if left > 0 else client.delete(storage.prefixed_key(name))
    clock.offset += seconds


def test_the_tpm_correction_is_booked_in_the_window_of_the_request(redis_client):
    """A request charged near a minute's end and settled in the next: its refund goes back to its own minute,
    so the next minute does not start in credit (it used to: -890 there, and 1,490 tokens then fit in it)."""
    clock = Clock()
    gw = gateway(redis_client, clock=clock)
    limiter, key = gw.admission.limiter, api_key("edge", tpm=1000)
    flight = gw.submit(job("e0", "edge", max_tokens=890), key=key)  # 10 + 890
    age(redis_client, limiter, key, clock, 61)  # the next minute
    limiter.peek(limiter.limits_of(key))  # any response's headers read the counters: the window moves on
    flight.usage = Usage(prompt_tokens=10, completion_tokens=0)
    gw.release(flight, finished=True)  # 890 given back
    age(redis_client, limiter, key, clock, 58)  # that minute's end: the first minute weighs 1/60 now
    gw.submit(job("e1", "edge", max_tokens=980), key=key)  # 990 in this minute
    with pytest.raises(RateLimited) as info:
        gw.submit(job("e2", "edge", max_tokens=490), key=key)  # 500 more would be 1,490 in one minute
    assert "tokens per min (TPM)" in info.value.message


def test_a_correction_for_a_window_gone_by_is_dropped(redis_client):
    """Settled after both windows have expired: nothing to correct, and no counter starts below zero."""
    clock = Clock()
    gw = gateway(redis_client, clock=clock)
    limiter, key = gw.admission.limiter, api_key("late", tpm=1000)
    flight = gw.submit(job("l0", "late", max_tokens=890), key=key)
    age(redis_client, limiter, key, clock, 125)
    flight.usage = Usage(prompt_tokens=10, completion_tokens=0)
    gw.release(flight, finished=True)
    assert limiter.peek(limiter.limits_of(key)).headers()["x-ratelimit-remaining-tokens"] == "1000"
    gw.submit(job("l1", "late", max_tokens=990), key=key)
    with pytest.raises(RateLimited):
        gw.submit(job("l2", "late", max_tokens=1), key=key)  # 11: one over


def test_tool_schemas_count_in_the_tpm_estimate(redis_client):
    """A chat's tools are templated into its prompt: a 40 KB schema is ~10k tokens, not 0."""
    gw = gateway(redis_client)
    key = api_key("tools", tpm=5000)
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "string", "description": "d" * 300}
                                               for i in range(120)}}  # fmt: skip
    tools = ({"type": "function", "function": {"name": "f", "parameters": schema}},)
    now = time.time()
    chat = Job(request_id="t0", model=MODEL, kind="chat", messages=(ChatMessage(role="user", content="hi"),),
               params=SamplingParams(max_tokens=10, tools=tools), accepted_at=now, deadline=now + 30,
               key_name="tools")  # fmt: skip
    with pytest.raises(RateLimited) as info:
        gw.submit(chat, key=key)
    assert "too large" in info.value.message and not redis_client.exists(keys.lease("t0"))


def test_a_request_over_the_whole_tpm_is_refused_on_an_unused_key_too(redis_client):
    """Nothing charged yet in either window: the wait for room divided by the current count (0), a 500."""
    gw = gateway(redis_client)
    with pytest.raises(RateLimited) as info:
        gw.submit(job("f0", "fresh", max_tokens=200), key=api_key("fresh", tpm=100))
    assert "too large" in info.value.message and "Retry-After" not in info.value.headers
