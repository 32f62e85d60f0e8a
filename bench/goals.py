"""The five figures issue 10 sets goals for, read from one run's modes and printed beside their goals.

Every ratio is between two sides measured in the same run with their levels interleaved, so the VM's
drift hits both alike: llama-server direct vs the stack over it (`--engines`, llama_server) and the
gateway vs LiteLLM's proxy, both with nothing behind them (`--gateway`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from bench.summary import LevelSummary

GATEWAY_ROLES = ("api", "worker", "redis", "nginx")
"""The gateway's processes; llama-server's CPU is the engine's, and the bench's own is the client's."""
CLIENTS = 32
"""Clients for the gateway-only requests/s figure: issue 10's goal is set at 32."""


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float | None
    goal: float | None  # None: reported, no goal
    at_most: bool = False  # the goal is a ceiling (latency, CPU) rather than a floor (ratios)
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.goal is None:
            return None
        return self.value <= self.goal if self.at_most else self.value >= self.goal


def _at(levels: Sequence[LevelSummary], concurrency: int) -> LevelSummary | None:
    return next((lv for lv in levels if lv.concurrency == concurrency), None)


def _diff_ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a - b) * 1000


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def gateway_cpu_ms(levels: Sequence[LevelSummary]) -> float | None:
    """CPU ms of the gateway's roles per successful request, over all levels weighted by requests."""
    ok = sum(lv.ok for lv in levels)
    if not ok or not any(lv.cpu_ms_per_request for lv in levels):
        return None
    return sum(lv.cpu_ms_per_request.get(r, 0.0) * lv.ok for lv in levels for r in GATEWAY_ROLES) / ok


def tokens_per_api_core(level: LevelSummary | None) -> tuple[float | None, float | None]:
    """(tokens/s carried, tokens/s per core the API replicas kept busy) for one level."""
    if level is None or not level.ok or "api" not in level.cpu_ms_per_request:
        return None, None
    api_cores = level.cpu_ms_per_request["api"] * level.ok / 1000 / max(level.wall_s, 1e-9)
    return level.tokens_per_s, _ratio(level.tokens_per_s, api_cores)


def figures(
    modes: Mapping[str, Sequence[LevelSummary]], *, tokens: int = 64, high: int = 8, clients: int = CLIENTS
) -> list[Figure]:
    """`modes` maps mode names to levels; a figure whose modes did not run is None (printed as '-')."""
    stack, direct = modes.get("engine-llama_server-stack", []), modes.get("engine-llama_server-direct", [])
    s1, d1, sh, dh = _at(stack, 1), _at(direct, 1), _at(stack, high), _at(direct, high)
    ours, theirs = _at(modes.get("gateway-json", []), clients), _at(modes.get("litellm-json", []), clients)
    long = modes.get("gateway-long", [])
    carried, per_core = tokens_per_api_core(long[0] if long else None)
    return [
        Figure(
            "added_ttft_p50_ms",
            "time to first token added, P50, c=1 (stack - llama-server)",
            _diff_ms(s1 and s1.ttft_p50_s, d1 and d1.ttft_p50_s),
            5.0,
            at_most=True,
            unit="ms",
        ),
        Figure(
            "added_ttft_p95_ms",
            "time to first token added, P95, c=1",
            _diff_ms(s1 and s1.ttft_p95_s, d1 and d1.ttft_p95_s),
            10.0,
            at_most=True,
            unit="ms",
        ),
        Figure(
            "tokens_per_s_ratio_c1",
            "tokens/s, stack / llama-server, c=1",
            _ratio(s1 and s1.tokens_per_s, d1 and d1.tokens_per_s),
            0.97,
            unit="x",
        ),
        Figure(
            f"tokens_per_s_ratio_c{high}",
            f"tokens/s, stack / llama-server, c={high}",
            _ratio(sh and sh.tokens_per_s, dh and dh.tokens_per_s),
            0.95,
            unit="x",
        ),
        Figure(
            "gateway_cpu_ms_per_request",
            f"gateway CPU per {tokens}-token request (API + worker + Redis + nginx)",
            gateway_cpu_ms(stack),
            20.0,
            at_most=True,
            unit="ms",
        ),
        Figure(
            f"requests_per_s_vs_litellm_c{clients}",
            f"gateway-only requests/s / LiteLLM's, c={clients} (instant engine vs mock_response)",
            _ratio(ours and ours.requests_per_s, theirs and theirs.requests_per_s),
            3.0,
            unit="x",
        ),
        Figure(
            "stream_tokens_per_s_per_api_core",
            f"streaming capacity: tokens/s per API core ({carried or 0:,.0f} tokens/s carried)",
            per_core,
            None,
            unit="tok/s",
        ),
    ]


def _value(figure: Figure) -> str:
    if figure.value is None:
        return "-"
    if figure.unit == "x":
        return f"{figure.value:.2f}x"
    if figure.unit == "ms":
        return f"{figure.value:+.1f} ms" if figure.key.startswith("added") else f"{figure.value:.1f} ms"
    if figure.unit == "s":
        return f"{figure.value:.2f} s"
    return f"{figure.value:,.0f} {figure.unit}"


def _goal(figure: Figure) -> str:
    if figure.goal is None:
        return "(reported)"
    unit = {"x": "x", "ms": " ms", "s": " s"}.get(figure.unit, "")
    return f"{'<=' if figure.at_most else '>='} {figure.goal:g}{unit}"


def text(
    found: Sequence[Figure],
    litellm: LevelSummary | None = None,
    title: str = "goals (issue 10), measured side by side in this run:",
) -> list[str]:
    """A Markdown table, goal and pass/miss beside each figure, then LiteLLM's own figures."""
    lines = [
        "",
        title,
        "| figure | value | goal | |",
        "|---|--:|--:|---|",
    ]
    for f in found:
        verdict = {True: "pass", False: "MISS", None: "-" if f.goal is not None and f.value is None else ""}[f.met]
        lines.append(f"| {f.label} | {_value(f)} | {_goal(f)} | {verdict} |")
    if litellm is not None:
        cpu = litellm.cpu_ms_per_request.get("litellm", 0.0)
        lines.append(
            f"LiteLLM proxy at c={litellm.concurrency}: {litellm.requests_per_s:.0f} requests/s,"
            f" {cpu:.1f} ms CPU/request, P50 latency {(litellm.latency_p50_s or 0) * 1000:.1f} ms"
        )
    return lines


def to_json(found: Sequence[Figure]) -> dict:
    return {f.key: {**asdict(f), "met": f.met} for f in found}
