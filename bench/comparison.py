"""The headline figures of a run, and how they stand against LiteLLM's (shared/PRIOR-ART.md).

LiteLLM is the gateway users compare us with. Its figures, measured on a 2-core machine in front of
llama-server with Gemma 270M: +18 ms to the first token (P50), 0.89x the tokens/s of calling
llama-server directly, about 150 requests/s from one process with an instant mock model at 7.5 ms
of CPU per request; its documents claim a few ms of median added latency and ~1,000 requests/s
across a few instances.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.summary import LevelSummary

LITELLM = {
    "added_ttft_p50_ms": 18.0,
    "tokens_per_s_ratio": 0.89,
    "mock_requests_per_s_one_process": 150.0,
    "mock_cpu_ms_per_request": 7.5,
}


def _at(levels: Sequence[LevelSummary], concurrency: int) -> LevelSummary | None:
    return next((lv for lv in levels if lv.concurrency == concurrency), None)


def _best(levels: Sequence[LevelSummary]) -> LevelSummary | None:
    return max(levels, key=lambda lv: lv.tokens_per_s, default=None)


def stack_vs_direct(stack: Sequence[LevelSummary], direct: Sequence[LevelSummary]) -> dict:
    """Added TTFT and the tokens/s ratio at concurrency 1 and at each side's best level."""
    figures: dict = {}
    s1, d1 = _at(stack, 1), _at(direct, 1)
    if s1 and d1:
        if s1.ttft_p50_s is not None and d1.ttft_p50_s is not None:
            figures["added_ttft_p50_ms_c1"] = (s1.ttft_p50_s - d1.ttft_p50_s) * 1000
        if s1.latency_p50_s is not None and d1.latency_p50_s is not None:
            figures["added_latency_p50_ms_c1"] = (s1.latency_p50_s - d1.latency_p50_s) * 1000
        if d1.tokens_per_s:
            figures["tokens_per_s_ratio_c1"] = s1.tokens_per_s / d1.tokens_per_s
    sb, db = _best(stack), _best(direct)
    if sb and db and db.tokens_per_s:
        figures["tokens_per_s_ratio_best"] = sb.tokens_per_s / db.tokens_per_s
        figures["best_stack"] = {"concurrency": sb.concurrency, "tokens_per_s": sb.tokens_per_s}
        figures["best_direct"] = {"concurrency": db.concurrency, "tokens_per_s": db.tokens_per_s}
    figures["per_level_added_ttft_p50_ms"] = {
        s.concurrency: (s.ttft_p50_s - d.ttft_p50_s) * 1000
        for s in stack
        if (d := _at(direct, s.concurrency)) and s.ttft_p50_s is not None and d.ttft_p50_s is not None
    }
    return figures


def stack_vs_direct_text(figures: dict) -> list[str]:
    lines = []
    if "added_ttft_p50_ms_c1" in figures:
        lines.append(
            f"time to first token added by the stack (P50, c=1): {figures['added_ttft_p50_ms_c1']:+.0f} ms"
            f"  (LiteLLM in front of llama-server: +{LITELLM['added_ttft_p50_ms']:.0f} ms)"
        )
    if "tokens_per_s_ratio_c1" in figures:
        lines.append(
            f"tokens/s through the stack / direct at c=1: {figures['tokens_per_s_ratio_c1']:.2f}x"
            f"  (LiteLLM: {LITELLM['tokens_per_s_ratio']:.2f}x)"
        )
    if "tokens_per_s_ratio_best" in figures:
        sb, db = figures["best_stack"], figures["best_direct"]
        lines.append(
            f"best tokens/s, stack / direct: {figures['tokens_per_s_ratio_best']:.2f}x"
            f"  ({sb['tokens_per_s']:.1f} at c={sb['concurrency']}"
            f" vs {db['tokens_per_s']:.1f} at c={db['concurrency']})"
        )
    return lines


def gateway_figures(levels: Sequence[LevelSummary]) -> dict:
    """Peak requests/s, latency added per request at c=1 (the whole latency: the engine takes ~0),
    and the API replicas' CPU per request at the peak."""
    if not levels:
        return {}
    peak = max(levels, key=lambda lv: lv.requests_per_s)
    one = _at(levels, 1) or levels[0]
    return {
        "peak_requests_per_s": peak.requests_per_s,
        "peak_concurrency": peak.concurrency,
        "added_latency_p50_ms_c1": (one.latency_p50_s or 0.0) * 1000,
        "api_cpu_ms_per_request": peak.cpu_ms_per_request.get("api"),
        "stack_cpu_ms_per_request": sum(v for k, v in peak.cpu_ms_per_request.items() if k != "bench") or None,
    }


def gateway_text(figures: dict, variant: str, litellm: dict | None = None) -> list[str]:
    """Our gateway's headline, then LiteLLM's as measured in this run (else its quoted figures)."""
    if not figures:
        return []
    api_cpu = figures.get("api_cpu_ms_per_request")
    all_cpu = figures.get("stack_cpu_ms_per_request")
    cpu = f", API CPU {api_cpu:.1f} ms/request (whole stack {all_cpu:.1f} ms)" if api_cpu is not None else ""
    lines = [
        f"gateway only ({variant}): {figures['peak_requests_per_s']:.0f} requests/s at c={figures['peak_concurrency']}"
        f" through nginx + API replicas + Redis + worker{cpu}; P50 latency at c=1:"
        f" {figures['added_latency_p50_ms_c1']:.1f} ms",
    ]
    if litellm:
        theirs = litellm.get("stack_cpu_ms_per_request")
        lines.append(
            f"  LiteLLM proxy, same run ({variant}): {litellm['peak_requests_per_s']:.0f} requests/s at"
            f" c={litellm['peak_concurrency']}, {theirs or 0:.1f} ms CPU/request; P50 latency at c=1:"
            f" {litellm['added_latency_p50_ms_c1']:.1f} ms"
        )
    else:
        lines.append(
            f"  LiteLLM, one process with an instant mock: ~{LITELLM['mock_requests_per_s_one_process']:.0f}"
            f" requests/s, {LITELLM['mock_cpu_ms_per_request']} ms CPU/request (quoted, not measured in this run)"
        )
    return lines
