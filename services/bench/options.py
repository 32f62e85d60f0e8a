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
    url: str | None
    levels: tuple[int, ...]
    requests: int
    max_tokens: int
    model: str | None
    slots: int | None
    stress_requests: int
    gateway_levels: tuple[int, ...]
    gateway_requests: int
    gateway_tokens: int
    gateway_slots: int
    engine_levels: tuple[int, ...]
    engine_slots: int
    engine_list: tuple[str, ...]
    mlx_cpu: bool
    timeout: float
    level_time_limit: float
    api_key: str
    out: Path
    plot: bool

    def requests_at(self, level: int) -> int:
        """Fixed when given; else enough for every client to send twice (at least 8), so the pool stays
        full for most of the level and a full default run stays within ~10 minutes on 2 cores."""
        return self.requests or max(8, 2 * level)


def parse(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m services.bench",
        description="Load-test the service: in-process llama.cpp (direct) vs the stack through nginx.",
    )
    p.add_argument(
        "--mode", type=mode_list, help="comma list of direct,stack,stress (default: direct,stack unless "
        "--gateway or --engines is given alone)"
    )  # fmt: skip
    p.add_argument("--gateway", action="store_true", help="gateway alone: an instant engine behind the real stack")
    p.add_argument("--engines", action="store_true", help="tokens/s per engine at c=1,4,8, and llama-server direct")
    p.add_argument("--url", help="stack/stress modes: a running deployment (loopback only) instead of a private stack")
    p.add_argument("--concurrency", type=int_list, default=DEFAULT_LEVELS, help="levels, e.g. 1,2,5")
    p.add_argument("--requests", type=int, default=0, help="requests per level (default: max(8, 2 x level))")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--model", help="model id (default: DEFAULT_MODEL)")
    p.add_argument("--slots", type=int, help="private stack's worker slots (default: WORKER_SLOTS)")
    p.add_argument("--stress-requests", type=int, default=50, help="serial requests in stress mode")
    p.add_argument("--gateway-concurrency", type=int_list, default=(1, 8, 32, 64))
    p.add_argument("--gateway-requests", type=int, default=300, help="requests per gateway level")
    p.add_argument("--gateway-tokens", type=int, default=16, help="tokens the instant engine returns")
    p.add_argument("--gateway-slots", type=int, default=16, help="instant worker slots")
    p.add_argument("--engines-concurrency", type=int_list, default=(1, 4, 8))
    p.add_argument("--engine-slots", type=int, default=8, help="slots (parallel sequences) per engine")
    p.add_argument(
        "--engine-list",
        type=choice_list(ENGINES, "engine"),
        default=ENGINES,
        help="--engines: which engines, e.g. llama_cpp,llama_server (default: all this machine can run)",
    )
    p.add_argument("--mlx-cpu", action="store_true", help="--engines: include MLX off Apple Silicon (slow)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--level-time-limit", type=float, default=600.0, help="seconds per level before giving up")
    p.add_argument("--api-key", default="bench", help="sent as a Bearer token")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    a = p.parse_args(argv)
    modes = a.mode if a.mode is not None else (() if a.gateway or a.engines else ("direct", "stack"))
    if not (modes or a.gateway or a.engines):
        p.error("nothing to run")
    return Options(
        modes=modes,
        gateway=a.gateway,
        engines=a.engines,
        url=a.url,
        levels=a.concurrency,
        requests=a.requests,
        max_tokens=a.max_tokens,
        model=a.model,
        slots=a.slots,
        stress_requests=a.stress_requests,
        gateway_levels=a.gateway_concurrency,
        gateway_requests=a.gateway_requests,
        gateway_tokens=a.gateway_tokens,
        gateway_slots=a.gateway_slots,
        engine_levels=a.engines_concurrency,
        engine_slots=a.engine_slots,
        engine_list=a.engine_list,
        mlx_cpu=a.mlx_cpu,
        timeout=a.timeout,
        level_time_limit=a.level_time_limit,
        api_key=a.api_key,
        out=a.out,
        plot=a.plot,
    )
