"""`--gateway`: the gateway alone, with an engine that answers instantly behind the real stack.

Whatever latency and CPU remain are nginx + API replicas + Redis + the worker's queue and event
handling: the cost this project adds on top of any engine. Both response styles are measured,
JSON bodies (what LiteLLM's published figures use) and SSE streams, each level beside LiteLLM's proxy
answering from `mock_response` in the same run; then long streamed answers, for the tokens/s the
gateway can carry per core of API.
"""

from __future__ import annotations

import contextlib
import time

from bench.cpu import CpuMeter
from bench.http_target import HttpTarget
from bench.litellm_proxy import LiteLLMUnavailable, litellm_proxy
from bench.load import run_level
from bench.session import ModeResult, Session, WarmupFailed
from bench.stack import private_stack
from bench.target import Target
from bench.workload import Workload

VARIANTS = {"json": False, "stream": True}
WARM_REQUESTS = 20  # warm every connection path and server process a little
WARM_LIMIT_S = 60.0


def instant_worker(model: str, slots: int) -> list[str]:
    return ["-m", "bench.instant_worker", "--model", model, "--slots", str(slots)]


def warm_up(target: Target, workload: Workload) -> None:
    """WARM_REQUESTS successes in a row: LiteLLM's health check answers from one uvicorn worker while
    another may still be starting (and answering 401), which would otherwise count as failed requests."""
    deadline = time.monotonic() + WARM_LIMIT_S
    streak, index, error = 0, 0, None
    while streak < WARM_REQUESTS:
        if time.monotonic() > deadline:
            raise WarmupFailed(
                f"{target.name}: not {WARM_REQUESTS} good answers in a row in {WARM_LIMIT_S:.0f} s: {error}"
            )
        sample = target.send(workload, index)
        streak, error = (streak + 1, error) if sample.ok else (0, sample.error)
        index += 1
        if not sample.ok:
            time.sleep(0.2)


def run_gateway(session: Session) -> None:
    """Registers gateway-<variant>, litellm-<variant> and gateway-long in session.modes, each level with
    CPU ms per request by process role, levels of the two gateways interleaved."""
    options, model = session.options, session.model.id
    connections = max(*options.gateway_levels, options.long_concurrency) + 4
    with contextlib.ExitStack() as alive:
        stack = alive.enter_context(
            private_stack(instant_worker(model, options.gateway_slots), label="gateway", model=model)
        )
        ours = HttpTarget(
            "gateway", stack.url, timeout=options.timeout, max_connections=connections, api_key=options.api_key
        )
        alive.callback(ours.close)
        sides: list[tuple[str, Target, CpuMeter]] = [("gateway", ours, stack.meter())]
        litellm = None
        if options.litellm:
            try:
                litellm = alive.enter_context(
                    litellm_proxy(model, tokens=options.gateway_tokens, workers=stack.settings.api_replicas)
                )
            except LiteLLMUnavailable as exc:
                session.notes.append(f"gateway: LiteLLM skipped: {exc}")
        if litellm is not None:
            theirs = HttpTarget(
                "litellm", litellm.url, timeout=options.timeout, max_connections=connections, api_key=litellm.api_key
            )
            alive.callback(theirs.close)
            sides.append(("litellm", theirs, CpuMeter({"litellm": [litellm.pid]})))
        replicas = stack.settings.api_replicas
        described = {
            "gateway": f"instant engine behind the private stack ({replicas} API replicas)",
            "litellm": f"LiteLLM proxy, {replicas} uvicorn workers, mock_response",
        }
        for variant, stream in VARIANTS.items():
            workload = Workload(model=model, max_tokens=options.gateway_tokens, stream=stream)
            for name, target, _ in sides:
                warm_up(target, workload)
                session.modes[f"{name}-{variant}"] = ModeResult(
                    f"{described[name]} ({variant} responses, {options.gateway_tokens} tokens)",
                    [],
                    {"worker_slots": options.gateway_slots} if name == "gateway" else {},
                )
            for level in options.gateway_levels:
                for name, target, meter in sides:
                    session.modes[f"{name}-{variant}"].levels.append(
                        run_level(
                            target,
                            workload,
                            level,
                            max(options.gateway_requests, level),
                            meter=meter,
                            time_limit_s=options.level_time_limit,
                            label=f"{name} {variant} c={level}",
                        )
                    )
        run_long(session, ours, stack.meter())


def run_long(session: Session, target: HttpTarget, meter: CpuMeter) -> None:
    """Long streamed answers: tokens/s the gateway carries, to divide by the API's busy cores."""
    options = session.options
    workload = Workload(model=session.model.id, max_tokens=options.long_tokens, stream=True)
    session.modes["gateway-long"] = ModeResult(
        f"instant engine behind the private stack (stream responses, {options.long_tokens} tokens)",
        [],
        {"worker_slots": options.gateway_slots},
    )
    session.modes["gateway-long"].levels.append(
        run_level(
            target,
            workload,
            options.long_concurrency,
            max(options.long_requests, options.long_concurrency),
            meter=meter,
            time_limit_s=options.level_time_limit,
            label=f"gateway long stream c={options.long_concurrency}",
        )
    )
