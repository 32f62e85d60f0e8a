"""The command line, parsed once into one frozen object that every mode reads."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import ROOT

DEFAULT_LEVELS = (1, 2, 5, 8, 10, 15, 20)
MODES = ("direct", "stack", "stress")
ENGINES = ("llama_cpp", "llama_server", "mlx")


def int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: want positive integers separated by commas")
    return values


def choice_list(choices: tuple[str, ...], what: str):
    """An argparse type for a comma-separated subset of `choices`."""

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)}")
        return values

    return parse


mode_list = choice_list(MODES, "mode")


@dataclass(frozen=True)
class Options:
    modes: tuple[str, ...]
    gateway: bool
    engines: bool
    goals: bool
    url: str | None
    levels: tuple[int, ...]
    requests: int
    min_requests: int
    rounds: int
    max_tokens: int
    model: str | None
    slots: int | None
    stress_requests: int
    gateway_levels: tuple[int, ...]
    gateway_requests: int
    gateway_tokens: int
    gateway_slots: int
    litellm: bool
    long_tokens: int
    long_requests: int
    long_concurrency: int
    engine_levels: tuple[int, ...]
    engine_slots: int
    engine_list: tuple[str, ...]
    mlx_cpu: bool
    timeout: float
    level_time_limit: float
    api_key: str
    out: Path
    plot: bool
    on_demand: bool
    on_demand_rounds: int
    swap_requests: int
    swap_concurrency: int

    def requests_at(self, level: int) -> int:
        """Fixed when given; else enough for every client to send twice (at least `min_requests`), so the
        pool stays full for most of the level and a full default run stays within ~10 minutes on 2 cores."""
        return self.requests or max(self.min_requests, 2 * level)


def parse(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load-test the service: in-process llama.cpp (direct) vs the stack through nginx.",
    )
    p.add_argument(
        "--mode", type=mode_list, help="comma list of direct,stack,stress (default: direct,stack unless "
        "--gateway or --engines is given alone)"
    )  # fmt: skip
    p.add_argument("--gateway", action="store_true", help="gateway alone: an instant engine behind the real stack")
    p.add_argument("--engines", action="store_true", help="tokens/s per engine at c=1,4,8, and llama-server direct")
    p.add_argument(
        "--goals", action="store_true", help="the five figures of issue 10 beside their goals: llama-server direct "
        "vs the stack at c=1,8 (--engines) and the gateway beside LiteLLM (--gateway)"
    )  # fmt: skip
    p.add_argument(
        "--on-demand", action="store_true", help="issue 27's figures: a model loaded on request vs a warm one, and"
        " two models swapped on one worker whose memory budget holds one"
    )  # fmt: skip
    p.add_argument("--on-demand-rounds", type=int, default=5, help="--on-demand: rounds of warm then cold TTFT")
    p.add_argument("--swap-requests", type=int, default=12, help="--on-demand: requests alternating the two models")
    p.add_argument("--swap-concurrency", type=int, default=4, help="--on-demand: at once, in the swap run's 2nd half")
    p.add_argument("--url", help="stack/stress modes: a running deployment (loopback only) instead of a private stack")
    p.add_argument("--concurrency", type=int_list, default=DEFAULT_LEVELS, help="levels, e.g. 1,2,5")
    p.add_argument("--requests", type=int, default=0, help="requests per level (default: max(N, 2 x level))")
    p.add_argument("--min-requests", type=int, help="N above (default: 8; 24 with --goals, for a TTFT P95)")
    p.add_argument(
        "--rounds", type=int, help="side-by-side levels run in N parts taken in turn by each side (default: 1;"
        " --goals: 3)"
    )  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--model", help="model id (default: DEFAULT_MODEL)")
    p.add_argument("--slots", type=int, help="private stack's worker slots (default: WORKER_SLOTS)")
    p.add_argument("--stress-requests", type=int, default=50, help="serial requests in stress mode")
    p.add_argument("--gateway-concurrency", type=int_list, default=(1, 8, 32, 64))
    p.add_argument("--gateway-requests", type=int, default=300, help="requests per gateway level")
    p.add_argument("--gateway-tokens", type=int, default=16, help="tokens the instant engine returns")
    p.add_argument("--gateway-slots", type=int, default=16, help="instant worker slots")
    p.add_argument("--no-litellm", dest="litellm", action="store_false", help="--gateway without LiteLLM's proxy")
    p.add_argument("--long-tokens", type=int, default=1024, help="tokens per long streamed answer (--gateway)")
    p.add_argument("--long-requests", type=int, default=300, help="long streamed answers (--gateway)")
    p.add_argument("--long-concurrency", type=int, default=16, help="clients for the long answers (--gateway)")
    p.add_argument("--engines-concurrency", type=int_list, help="default: 1,4,8 (--goals: 1,8)")
    p.add_argument("--engine-slots", type=int, default=8, help="slots (parallel sequences) per engine")
    p.add_argument(
        "--engine-list",
        type=choice_list(ENGINES, "engine"),
        help="--engines: which engines, e.g. llama_cpp,llama_server (default: all this machine can run;"
        " --goals: llama_server)",
    )
    p.add_argument("--mlx-cpu", action="store_true", help="--engines: include MLX off Apple Silicon (slow)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--level-time-limit", type=float, default=600.0, help="seconds per level before giving up")
    p.add_argument("--api-key", default="bench", help="sent as a Bearer token")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    a = p.parse_args(argv)
    alone = a.gateway or a.engines or a.goals or a.on_demand
    modes = a.mode if a.mode is not None else (() if alone else ("direct", "stack"))
    if not (modes or alone):
        p.error("nothing to run")
    return Options(
        modes=modes,
        gateway=a.gateway or a.goals,
        engines=a.engines or a.goals,
        goals=a.goals,
        url=a.url,
        levels=a.concurrency,
        requests=a.requests,
        min_requests=a.min_requests or (24 if a.goals else 8),
        rounds=a.rounds or (3 if a.goals else 1),
        max_tokens=a.max_tokens,
        model=a.model,
        slots=a.slots,
        stress_requests=a.stress_requests,
        gateway_levels=a.gateway_concurrency,
        gateway_requests=a.gateway_requests,
        gateway_tokens=a.gateway_tokens,
        gateway_slots=a.gateway_slots,
        litellm=a.litellm,
        long_tokens=a.long_tokens,
        long_requests=a.long_requests,
        long_concurrency=a.long_concurrency,
        engine_levels=a.engines_concurrency or ((1, 8) if a.goals else (1, 4, 8)),
        engine_slots=a.engine_slots,
        engine_list=a.engine_list or (("llama_server",) if a.goals else ENGINES),
        mlx_cpu=a.mlx_cpu,
        timeout=a.timeout,
        level_time_limit=a.level_time_limit,
        api_key=a.api_key,
        out=a.out,
        plot=a.plot,
        on_demand=a.on_demand,
        on_demand_rounds=max(1, a.on_demand_rounds),
        swap_requests=max(2, a.swap_requests),
        swap_concurrency=max(1, a.swap_concurrency),
    )
