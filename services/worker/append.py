"""A stream write as one Redis command: the events' XADDs, the stream's EXPIRE and, when asked, a read
of the request's lease, in one Lua script.

The script is atomic as the MULTI/EXEC it replaced (a stream never exists without its TTL, even when an
XADD lands after the API deleted it), at one command instead of four or five: a slot writes a batch
about twenty times a second, and on the 2-core VM redis-py's per-command packing and reply parsing
(MULTI, QUEUED, EXEC) was most of the worker's CPU with the instant engine. EVAL carries the script's
text each time, so a restarted Redis (whose script cache is empty) needs no reload and no NOSCRIPT retry;
Redis caches the compiled script by its SHA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.client import Pipeline

from services.common import events

Prelude = Callable[[Pipeline], None]
"""Adds commands to the round trip that writes an event (a slot's RQ bookkeeping with `started`)."""

SCRIPT = """
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'kind', ARGV[i], 'data', ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  return redis.call('EXISTS', KEYS[2])
end
return -1
"""


def append(
    pipe: Pipeline, stream: str, lease: str, ttl: int, written: Sequence[events.Event], *, check_lease: bool
) -> None:
    """Add the write of `written` (in order) to `pipe`; its reply is 1 or 0 (the lease is there or not)
    when `check_lease`, else -1."""
    args: list[str | int] = [ttl, int(check_lease)]
    for event in written:
        fields = events.encode(event)
        args += (fields["kind"], fields["data"])
    pipe.execute_command("EVAL", SCRIPT, 2, stream, lease, *args)
