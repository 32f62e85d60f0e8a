"""Every Redis key name the service uses, in one place, so that nothing else spells them."""

from __future__ import annotations

PREFIX = "inference"


def queue_name(model_id: str) -> str:
    """RQ queue for one model: workers serving the model listen on it."""
    return f"{PREFIX}.model.{model_id}"


def queue_key(model_id: str) -> str:
    """The Redis list behind that RQ queue (RQ's `rq:queue:` prefix): LLEN/LPOS read it."""
    return f"rq:queue:{queue_name(model_id)}"


def stream(request_id: str) -> str:
    """Redis Stream carrying one request's events from the worker to the API."""
    return f"{PREFIX}:stream:{request_id}"


def lease(request_id: str) -> str:
    """Exists while someone waits for the answer of this attempt (`request_id` is the job's, see
    jobs.attempt_id): set with the enqueue, renewed every LEASE_TTL/3 by the API process whose client is
    connected, deleted when the client goes away or the job is retried. Workers generate only while it
    exists, so a request whose client or API replica died, or whose state a Redis restart wiped, stops
    within LEASE_TTL."""
    return f"{PREFIX}:lease:{request_id}"


def worker(worker_id: str) -> str:
    """A worker's heartbeat record (JSON), expiring when it stops beating."""
    return f"{PREFIX}:worker:{worker_id}"


def workers_index() -> str:
    """Sorted set of worker ids scored by heartbeat expiry, so readers need no SCAN."""
    return f"{PREFIX}:workers"


def control(worker_id: str) -> str:
    """List of control commands (load/unload) for one worker."""
    return f"{PREFIX}:control:{worker_id}"


def loading(model_id: str) -> str:
    """Held (SET NX, with a TTL the loader renews) by the one worker loading a model for the requests that wait
    for it, so two workers that both could do not both load it; holds the worker's id."""
    return f"{PREFIX}:loading:{model_id}"


def load_failed(model_id: str) -> str:
    """Why the last load of a model on request failed, for a short while: the requests waiting for it end
    with that reason at once instead of at MODEL_LOAD_WAIT_S."""
    return f"{PREFIX}:load-failed:{model_id}"


def command_result(command_id: str) -> str:
    """List a worker pushes its answer to one load/unload command onto (common/commands.py), read by the API
    replica that sent it; it expires unread when nobody waits any more."""
    return f"{PREFIX}:command:{command_id}"


def inflight() -> str:
    """Sorted set of admitted request ids scored by lease expiry (renewed with the lease), for
    MAX_CONCURRENT_REQUESTS: the entries of a dead API replica fall out within LEASE_TTL."""
    return f"{PREFIX}:inflight"


def traffic(slice_start: int) -> str:
    """Hash of one short time slice's completion requests and time-to-first-token buckets, summed over every
    API replica for the status page; it expires by itself once older than the page looks back."""
    return f"{PREFIX}:traffic:{slice_start}"


def service_times(model_id: str) -> str:
    """List of a model's recent service times (seconds from dequeue to done), newest first, capped; every
    replica pushes to it and reads it to estimate a waiting request's wait (api/queue_wait.py)."""
    return f"{PREFIX}:service:{model_id}"


def key_inflight(key_name: str) -> str:
    """Sorted set of one API key's admitted request ids scored by lease expiry (renewed with the lease), for
    the key's concurrency limit; like `inflight`, a dead replica's entries fall out within LEASE_TTL."""
    return f"{PREFIX}:inflight:key:{key_name}"


def limits_prefix() -> str:
    """Prefix of the `limits` library's per-key RPM/TPM window counters (services/api/limits/ratelimit.py)."""
    return f"{PREFIX}:limits"


def fair(model_id: str) -> str:
    """Hash of one model queue's fair-share tags: `v` (virtual time), `k:<key name>` (the key's last finish
    tag), `j:<job id>` (a waiting job's start tag). Expires when the queue has been idle a while."""
    return f"{PREFIX}:fair:{model_id}"


def usage(day: str) -> str:
    """Hash of one UTC day's (YYYY-MM-DD) usage per API key: `<key name>|requests`, `|prompt_tokens`,
    `|completion_tokens`; expires a few weeks after the day."""
    return f"{PREFIX}:usage:{day}"
