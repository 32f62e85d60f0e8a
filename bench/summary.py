"""One concurrency level's figures: throughput, success, latency and time-to-first-token percentiles."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from bench.sample import Sample


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when there is no value."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class LevelSummary:
    """Rates are over the level's wall time; tokens are completion tokens from usage, successes only."""

    concurrency: int
    requests: int
    ok: int
    wall_s: float
    success_rate: float
    requests_per_s: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    completion_tokens: int
    tokens_per_s: float
    errors: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    other_cpu_cores: float | None = None
    """Cores other processes on the machine kept busy on average during the level (noise)."""
    writes_per_request: float | None = None
    """HTTP chunks with text a streamed request got, on average (Sample.writes); None when not streamed over HTTP."""
    write_gap_p50_s: float | None = None
    write_gap_p95_s: float | None = None
    """Time between those chunks: how smooth a stream looks, against what the gateway's batching saves."""

    def to_json(self) -> dict:
        return asdict(self)


def summarize(samples: Sequence[Sample], concurrency: int, wall_s: float) -> LevelSummary:
    good = [s for s in samples if s.ok]
    latencies = [s.latency_s for s in good]
    ttfts = [s.ttft_s for s in good if s.ttft_s is not None]
    tokens = sum(s.completion_tokens for s in good)
    written = [s for s in good if s.writes]
    gaps = [gap for s in written for gap in s.write_gaps_s]
    wall = max(wall_s, 1e-9)
    return LevelSummary(
        concurrency=concurrency,
        requests=len(samples),
        ok=len(good),
        wall_s=wall_s,
        success_rate=len(good) / len(samples) if samples else 0.0,
        requests_per_s=len(good) / wall,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
        completion_tokens=tokens,
        tokens_per_s=tokens / wall,
        errors=dict(Counter(s.error or "unknown" for s in samples if not s.ok)),
        writes_per_request=sum(s.writes for s in written) / len(written) if written else None,
        write_gap_p50_s=percentile(gaps, 50),
        write_gap_p95_s=percentile(gaps, 95),
    )
