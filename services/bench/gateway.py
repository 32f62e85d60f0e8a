"""`--gateway`: the gateway alone, with an engine that answers instantly behind the real stack.

Whatever latency and CPU remain are nginx + API replicas + Redis + the worker's queue and event
handling: the cost this project adds on top of any engine. Both response styles are measured,
JSON bodies (what LiteLLM's published figures use) and SSE streams.
"""

from __future__ import annotations

from services.bench.http_target import HttpTarget
from services.bench.load import run_level
from services.bench.options import Options
from services.bench.stack import private_stack
from services.bench.summary import LevelSummary
from services.bench.workload import Workload

VARIANTS = {"json": False, "stream": True}


def instant_worker(model: str, slots: int) -> list[str]:
    return ["-m", "services.bench.instant_worker", "--model", model, "--slots", str(slots)]


def run_gateway(options: Options, model: str, into: dict[str, list[LevelSummary]]) -> None:
    """Appends levels per variant to `into` as they finish, each with CPU ms per request by process role."""
    with private_stack(instant_worker(model, options.gateway_slots), label="gateway", model=model) as stack:
        meter = stack.meter()
        target = HttpTarget(
            "gateway",
            stack.url,
            timeout=options.timeout,
            max_connections=max(options.gateway_levels) + 4,
            api_key=options.api_key,
        )
        try:
            for variant, stream in VARIANTS.items():
                workload = Workload(model=model, max_tokens=options.gateway_tokens, stream=stream)
                for i in range(20):  # warm every connection path and gunicorn worker a little
                    target.send(workload, i)
                for level in options.gateway_levels:
                    into[variant].append(
                        run_level(
                            target,
                            workload,
                            level,
                            max(options.gateway_requests, level),
                            meter=meter,
                            time_limit_s=options.level_time_limit,
                            label=f"gateway {variant} c={level}",
                        )
                    )
        finally:
            target.close()
