"""Tables for the terminal (Markdown, so they paste into the README) and the JSON file of a run."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench.summary import LevelSummary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def level_table(levels: Sequence[LevelSummary], *, cpu: bool = False) -> str:
    """One row per concurrency; `cpu` adds milliseconds of CPU per request for each process role."""
    roles = sorted({r for lv in levels for r in lv.cpu_ms_per_request}) if cpu else []
    head = ["conc", "requests", "success", "req/s", "p50 latency", "p95 latency", "p50 TTFT", "p95 TTFT", "tokens/s"]
    writes = any(lv.writes_per_request for lv in levels)
    if writes:
        head += ["writes/req", "p50 write gap"]
    head.append("others' CPU")
    head += [f"CPU ms/req {r}" for r in roles]
    rows = []
    for lv in levels:
        row = [
            str(lv.concurrency),
            str(lv.requests),
            f"{lv.success_rate:.0%}",
            f"{lv.requests_per_s:.2f}",
            _s(lv.latency_p50_s) if (lv.latency_p50_s or 0) >= 1 else _ms(lv.latency_p50_s),
            _s(lv.latency_p95_s) if (lv.latency_p95_s or 0) >= 1 else _ms(lv.latency_p95_s),
            _ms(lv.ttft_p50_s),
            _ms(lv.ttft_p95_s),
            f"{lv.tokens_per_s:.1f}",
        ]
        if writes:
            row += ["-" if lv.writes_per_request is None else f"{lv.writes_per_request:.1f}", _ms(lv.write_gap_p50_s)]
        row += ["-" if lv.other_cpu_cores is None else f"{lv.other_cpu_cores:.2f} cores"]
        row += [f"{lv.cpu_ms_per_request.get(r, 0.0):.2f}" for r in roles]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    errors = {e: n for lv in levels for e, n in lv.errors.items()}
    if errors:
        lines.append("errors: " + "; ".join(f"{n}x {e}" for e, n in errors.items()))
    return "\n".join(lines)


NOISY_CORES = 0.25


def noise_warning(levels: Sequence[LevelSummary]) -> str | None:
    """A loud line when other processes kept the CPU busy: llama.cpp's spinning threads then slow down
    far more than the stolen share (measured: 20-50x on 2 cores with one busy process beside them)."""
    noisy = [lv for lv in levels if (lv.other_cpu_cores or 0.0) > NOISY_CORES]
    if not noisy:
        return None
    worst = max(noisy, key=lambda lv: lv.other_cpu_cores or 0.0)
    return (
        f"WARNING: other processes kept {worst.other_cpu_cores:.2f} cores busy (c={worst.concurrency});"
        f" {len(noisy)} level(s) above {NOISY_CORES} cores: these figures are disturbed, run again on a quiet machine"
    )


def machine() -> dict:
    """What the figures were measured on; a 2-core laptop and a server differ by an order of magnitude."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def write_json(path: Path, results: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path
