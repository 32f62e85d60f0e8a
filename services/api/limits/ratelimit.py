"""Per-key requests and tokens per minute, counted in Redis so a limit holds across every API replica.

The `limits` library keeps the counters (see RateLimiter for which window each limit uses). A completion is charged one
request and its token estimate (prompt characters / 4 + max_tokens) at admission; at its end the estimate
is corrected to the tokens the worker reported, so a key pays for what it used. The correction goes to the
window the estimate was charged to, which by then may be the previous one: booked into the current window,
a refund started the next minute in credit, and a key passed its TPM across the boundary. A request refused
by one limit gives back what the other already took. Concurrency per key is not here: it is counted atomically
with admission (admission.py), scored by lease expiry like the global in-flight set. What each limit of a key
is, and where its value comes from: key_limits.py.

Headers follow OpenAI's: `x-ratelimit-limit-requests`, `-remaining-requests`, `-reset-requests` (time until
the window is empty again, as "1m0s", "1.5s", "20ms") and the same for `-tokens`, on every response to a
keyed caller, for each dimension the key is limited in.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import falcon
import redis
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from services.api.limits.key_limits import KeyLimits
from services.common import keys
from services.common.errors import RateLimited
from services.common.jobs import Job
from services.common.settings import Settings
from services.keys.store import ApiKey

WINDOW_S = 60
"""Both limits are per minute."""
SAME_WINDOW_S = 1.0
"""How far apart two readings of one window's end may be (round trips): windows end WINDOW_S apart."""
CHARS_PER_TOKEN = 4
"""A prompt's token estimate at admission; the real count corrects it at the end."""
TOKENS_PER_MESSAGE = 4
"""A chat template's tokens around each message."""


@dataclass(frozen=True)
class Window:
    """One limit's state after a charge: what OpenAI's three headers say, and how long until `cost` fits."""

    kind: str
    """`requests` or `tokens`."""
    limit: int
    remaining: int
    reset_s: float
    retry_s: float = 0.0
    ends: float = 0.0
    """Tokens: when the current window stops being current (the limiter's clock), which names it."""

    def headers(self) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{self.kind}": str(self.limit),
            f"x-ratelimit-remaining-{self.kind}": str(self.remaining),
            f"x-ratelimit-reset-{self.kind}": duration(self.reset_s),
        }


@dataclass
class Quota:
    """What one request was charged, for its headers and for the correction at its end."""

    limits: KeyLimits
    windows: list[Window] = field(default_factory=list)
    requests: int = 0
    """1 when a request was charged (the key has an RPM limit)."""
    tokens: int = 0
    """Tokens charged at admission (0 when the key has no TPM limit)."""
    tokens_window: float = 0.0
    """When the window they were charged to stopped or stops being the current one (the limiter's clock):
    which window their correction belongs to."""

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for window in self.windows:
            out.update(window.headers())
        return out


def duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def _json_chars(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":"))) if value else 0


def estimate_tokens(job: Job) -> int:
    """Prompt estimate + max_tokens: what the request may use at most, roughly (an embedding job: its inputs;
    a prompt's further choice: max_tokens, its prompt is counted once). Tool schemas, a response_format's
    schema and the calls in assistant turns count as prompt: the engine templates them into it, and a
    schema can be far bigger than the messages."""
    schemas = _json_chars(job.params.tools) + _json_chars(job.params.response_format)
    if job.kind == "chat":
        chars = sum(len(m.content) + _json_chars(m.tool_calls) for m in job.messages) + schemas
        prompt = chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(job.messages)
        return prompt * job.prompt_counted + job.params.max_tokens
    if job.kind == "completion":
        return (len(job.prompt) + schemas) // CHARS_PER_TOKEN * job.prompt_counted + job.params.max_tokens
    inputs = getattr(job, "inputs", ())
    return sum(len(i) // CHARS_PER_TOKEN + 1 if isinstance(i, str) else len(i) for i in inputs)


class RateLimiter:
    """Charges and corrects per-key RPM/TPM; one instance per process, sharing the app's Redis pool.

    Requests use limits' moving window (exact: a request counts for 60 s, one list entry per request, at
    most RPM entries); tokens its sliding window counter (two counters whatever a request costs; a token
    counts fully in its minute and then decays over the next, so a burst frees up a little later than 60 s).
    """

    def __init__(self, client: redis.Redis, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._book = client.register_script(BOOK)
        # limits builds its client on our pool (the URL only names the scheme), so it shares our timeouts
        self.storage = RedisStorage("redis://", connection_pool=client.connection_pool, key_prefix=keys.limits_prefix())
        self.requests = MovingWindowRateLimiter(self.storage)
        self.tokens = SlidingWindowCounterRateLimiter(self.storage)

    def limits_of(self, key: ApiKey | None) -> KeyLimits | None:
        return None if key is None else KeyLimits.of(key, self.settings)

    def charge(self, limits: KeyLimits, job: Job) -> Quota:
        """Take one request and the job's token estimate, or raise a 429 (with Retry-After and the headers)
        having taken nothing. A fanned-out request is one request however many choices: only its first
        job takes it (`Job.choice`)."""
        quota = Quota(limits)
        tokens = estimate_tokens(job)
        if limits.rpm:
            item = RateLimitItemPerMinute(limits.rpm)
            if job.choice == 0 and not self.requests.hit(item, "requests", limits.name):
                self._refuse(quota, self._requests_window(limits, refused=True), 1)
            quota.requests = int(job.choice == 0)
            quota.windows.append(self._requests_window(limits))
        if limits.tpm:
            item = RateLimitItemPerMinute(limits.tpm)
            if tokens > limits.tpm or not self.tokens.hit(item, "tokens", limits.name, cost=tokens):
                window = self._tokens_window(limits, tokens)
                self.refund(quota)
                self._refuse(Quota(limits, [*quota.windows]), window, tokens)
            quota.tokens = tokens
            window = self._tokens_window(limits, 1)
            quota.tokens_window = window.ends
            quota.windows.append(window)
        return quota

    def _refuse(self, quota: Quota, refused: Window, cost: int) -> NoReturn:
        headers = {**quota.headers(), **refused.headers()}
        name, kind = quota.limits.name, refused.kind
        if cost > refused.limit:
            raise RateLimited(
                f"Request too large for the key '{name}': it may use up to {cost} tokens (prompt + max_tokens) "
                f"and its limit is {refused.limit} tokens per minute. Lower max_tokens.",
                code="rate_limit_exceeded",
                headers=headers,
            )
        headers["Retry-After"] = str(max(1, math.ceil(refused.retry_s)))
        short = "RPM" if kind == "requests" else "TPM"
        raise RateLimited(
            f"Rate limit reached for the key '{name}' on {kind} per min ({short}): Limit {refused.limit}, "
            f"Remaining {refused.remaining}, Requested {cost}. Please try again in {duration(refused.retry_s)}.",
            code="rate_limit_exceeded",
            headers=headers,
        )

    def refund(self, quota: Quota) -> None:
        """Give back a charge whose request was refused after it (by the other limit, or admission's own)."""
        limits = quota.limits
        if quota.requests:
            key = RateLimitItemPerMinute(limits.rpm).key_for("requests", limits.name)
            self.storage.get_connection().lpop(self.storage.prefixed_key(key))  # the newest entry is ours
            quota.requests = 0
        if quota.tokens:
            self._correct_tokens(quota, -quota.tokens)
            quota.tokens = 0

    def settle(self, quota: Quota, used: int) -> None:
        """Correct the token estimate charged at admission to the tokens used (usually a refund)."""
        if quota.limits.tpm and quota.tokens and used != quota.tokens:
            self._correct_tokens(quota, used - quota.tokens)

    def peek(self, limits: KeyLimits) -> Quota:
        """The headers' values without charging anything (routes that cost nothing)."""
        quota = Quota(limits)
        if limits.rpm:
            quota.windows.append(self._requests_window(limits))
        if limits.tpm:
            quota.windows.append(self._tokens_window(limits, 1))
        return quota

    def _requests_window(self, limits: KeyLimits, refused: bool = False) -> Window:
        """Moving window: `reset` is when its oldest request leaves it, which is also when one fits again."""
        stats = self.requests.get_window_stats(RateLimitItemPerMinute(limits.rpm), "requests", limits.name)
        reset = max(0.0, stats.reset_time - time.time()) if stats.remaining < limits.rpm else 0.0
        return Window("requests", limits.rpm, max(0, stats.remaining), reset, reset if refused else 0.0)

    def _tokens_key(self, limits: KeyLimits) -> str:
        return RateLimitItemPerMinute(limits.tpm).key_for("tokens", limits.name)

    def _tokens_window(self, limits: KeyLimits, cost: int) -> Window:
        expiry, limit = float(WINDOW_S), limits.tpm
        prev, prev_ttl, cur, cur_ttl = self.storage.get_sliding_window(self._tokens_key(limits), WINDOW_S)
        used = prev * prev_ttl / expiry + cur
        remaining = max(0, limit - math.floor(used))
        reset = cur_ttl if cur > 0 else (prev_ttl if prev > 0 else 0.0)
        wait = _wait_for(cost, limit, prev, prev_ttl, cur, cur_ttl, expiry)
        return Window("tokens", limit, remaining, reset, wait, ends=self.clock() + cur_ttl - expiry)

    def _correct_tokens(self, quota: Quota, amount: int) -> None:
        """Add `amount` (negative: give back) to the token counter of the window `quota` was charged to,
        the current or the previous one (limits' two keys); a window gone by counts no more: nothing to do."""
        storage, key = self.storage, self._tokens_key(quota.limits)
        names = [storage.prefixed_key(k) for k in (storage._previous_window_key(key), storage._current_window_key(key))]
        args = [round(self.clock() * 1000), WINDOW_S * 1000, round(quota.tokens_window * 1000), amount]
        self._book(keys=names, args=[*args, round(SAME_WINDOW_S * 1000)])


# KEYS: the previous and the current window's counters, as limits names them. ARGV: now, the window's length,
# the end of the window to correct (all ms, the limiter's clock), the amount, the tolerance (ms).
# A counter's window ends (stops being current) when its TTL falls below one window: limits' scripts create
# a current counter with two windows' TTL and rename it to the previous one once it has less than one left.
BOOK = """
for i = 2, 1, -1 do
  local ttl = redis.call('PTTL', KEYS[i])
  local ends = tonumber(ARGV[1]) + ttl - tonumber(ARGV[2])
  if ttl > 0 and math.abs(ends - tonumber(ARGV[3])) <= tonumber(ARGV[5]) then
    if redis.call('INCRBY', KEYS[i], ARGV[4]) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
    return i
  end
end
return 0
"""


def _wait_for(cost: int, limit: int, prev: int, prev_ttl: float, cur: int, cur_ttl: float, expiry: float) -> float:
    """Seconds until `cost` fits under `limit` in a sliding window counter (previous window weighted by the
    share of it still inside the last minute); never (inf) for a cost over the limit itself."""
    if cost > limit:
        return math.inf
    room = limit - cost - cur
    if room >= 0:
        if prev <= 0 or prev * prev_ttl / expiry <= room:
            return 0.0
        return max(0.0, prev_ttl - room * expiry / prev)
    # the current window's count alone is too much: wait until it becomes the previous one and decays
    shift = max(0.0, cur_ttl - expiry)
    return shift + expiry * (1 - (limit - cost) / cur)


class RateLimitHeaders:
    """Middleware: OpenAI's x-ratelimit-* headers on every response to a keyed caller, errors included.

    A completion leaves what it was charged on `req.context.quota`; any other route (or a request refused
    before its charge) gets the windows as they stand, read without charging.
    """

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        quota: Quota | None = req.context.get("quota")
        if quota is None:
            limits = self.limiter.limits_of(req.context.get("api_key"))
            if limits is None or not (limits.rpm or limits.tpm):
                return
            if resp.get_header("x-ratelimit-limit-requests") or resp.get_header("x-ratelimit-limit-tokens"):
                return  # a 429 already carries them
            try:
                quota = self.limiter.peek(limits)
            except redis.RedisError:
                return
        for name, value in quota.headers().items():
            resp.set_header(name, value)
