"""Drive a target at a fixed concurrency: N requests, at most C in flight, with a progress bar.

Threads, not asyncio: the targets block (httpx, llama.cpp), and a thread per in-flight request is
what a simple client does; the pool keeps exactly C requests outstanding until the last ones.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import sys
import time

from tqdm import tqdm

from bench.cpu import CpuMeter
from bench.sample import Sample, failed
from bench.summary import LevelSummary, summarize
from bench.target import Target
from bench.workload import Workload


@dataclasses.dataclass(frozen=True)
class Part:
    """Part of a level: its samples, wall time and CPU seconds by role (`others` included)."""

    samples: list[Sample]
    wall_s: float
    spent: dict[str, float]


def combine(parts: list[Part], concurrency: int) -> LevelSummary:
    """One level from parts run at different times (interleaved with another target's parts)."""
    samples = [s for part in parts for s in part.samples]
    wall = sum(part.wall_s for part in parts)
    summary = summarize(samples, concurrency, wall)
    spent: dict[str, float] = {}
    for part in parts:
        for role, seconds in part.spent.items():
            spent[role] = spent.get(role, 0.0) + seconds
    others = spent.pop("others", 0.0)
    ok = max(1, summary.ok)
    return dataclasses.replace(
        summary,
        cpu_ms_per_request={k: v * 1000 / ok for k, v in spent.items()},
        other_cpu_cores=others / max(wall, 1e-9),
    )


def run_level(
    target: Target,
    workload: Workload,
    concurrency: int,
    requests: int,
    *,
    first_index: int = 0,
    time_limit_s: float = 600.0,
    meter: CpuMeter | None = None,
    label: str = "",
) -> LevelSummary:
    """Requests left unsent when `time_limit_s` runs out count as failures, so a stuck run ends.

    `meter` splits CPU by process role; without one only this process is known, so everything else
    on the machine counts as noise.
    """
    part = run_part(
        target,
        workload,
        concurrency,
        requests,
        first_index=first_index,
        time_limit_s=time_limit_s,
        meter=meter,
        label=label,
    )
    return combine([part], concurrency)


def run_part(
    target: Target,
    workload: Workload,
    concurrency: int,
    requests: int,
    *,
    first_index: int = 0,
    time_limit_s: float = 600.0,
    meter: CpuMeter | None = None,
    label: str = "",
) -> Part:
    """run_level's requests, before they are summarized."""
    meter = meter or CpuMeter()
    samples: list[Sample] = []
    bar = tqdm(total=requests, desc=label or f"{target.name} c={concurrency}", unit="req", file=sys.stderr)
    before = meter.snapshot()
    started = time.perf_counter()
    pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench")
    try:
        futures = [pool.submit(target.send, workload, first_index + i) for i in range(requests)]
        pending: set[cf.Future] = set(futures)
        deadline: float | None = started + time_limit_s
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
            done, pending = cf.wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")
            for future in done:
                samples.append(future.result())
                bar.update(1)
            if deadline is not None and time.perf_counter() >= deadline and pending:
                for future in pending:
                    if future.cancel():
                        samples.append(failed(time_limit_s, "not sent: level time limit reached"))
                pending = {f for f in pending if not f.cancelled()}
                deadline = None  # those already running end on the target's own timeout
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C/SIGTERM: send nothing more, unwind now
    wall = time.perf_counter() - started
    bar.close()
    return Part(samples, wall, meter.since(before))
