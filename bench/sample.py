"""One request's outcome, as every target reports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """Times are seconds from the moment the request was handed to the target (queueing included)."""

    ok: bool
    latency_s: float
    ttft_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None
    writes: int = 0
    """HTTP chunks that brought text (streamed over HTTP only): one a token from llama-server, one a batch
    from the stack, so it shows how often a reader's screen moves, whatever the tokens/s."""
    write_gaps_s: tuple[float, ...] = ()
    """Seconds between those chunks' arrivals."""


def failed(latency_s: float, error: str) -> Sample:
    return Sample(ok=False, latency_s=latency_s, error=error[:200])
