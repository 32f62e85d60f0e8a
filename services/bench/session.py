"""One benchmark run: the modes asked for, in order, collected into one result dict.

Each mode warms its target with one uncounted request (model pages, connection pools, prefix cache),
then sweeps the concurrency levels.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.bench import comparison
from services.bench.cpu import CpuMeter
from services.bench.direct_target import DirectTarget
from services.bench.http_target import HttpTarget, require_loopback
from services.bench.load import run_level, sweep
from services.bench.options import Options
from services.bench.stack import private_stack
from services.bench.summary import LevelSummary
from services.bench.target import Target
from services.common.catalog import Catalog
from services.common.settings import Settings, load_settings


class WarmupFailed(RuntimeError):
    """The first request failed: the target is not serving, so measuring it would be meaningless."""


def warm(target: Target, workload) -> None:
    sample = target.send(workload, 0)
    if not sample.ok:
        raise WarmupFailed(f"{target.name}: warm-up request failed: {sample.error}")


@dataclass(frozen=True)
class ModelInfo:
    id: str
    path: Path | None
    chat_format: str
    n_ctx: int


def model_info(settings: Settings, requested: str | None) -> ModelInfo:
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    model_id = catalog.resolve(requested or catalog.default)
    spec = catalog.models[model_id]
    return ModelInfo(
        model_id,
        catalog.path_for(model_id, "llama_cpp", settings.models_dir),
        spec.chat_format or "chatml",
        min(settings.n_ctx, spec.context_length),
    )


def llama_cpp_worker(model: str, slots: int) -> list[str]:
    return ["-m", "services.worker", "--engine", "llama_cpp", "--model", model, "--slots", str(slots)]


@dataclass
class ModeResult:
    """One mode's levels and what was measured; `extra` goes into the JSON beside them."""

    target: str
    levels: list[LevelSummary]
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"target": self.target, **self.extra, "levels": [lv.to_json() for lv in self.levels]}


@dataclass
class Session:
    options: Options
    settings: Settings = field(default_factory=load_settings)
    modes: dict[str, ModeResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra_figures: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = model_info(self.settings, self.options.model)
        self.slots = self.options.slots or self.settings.worker_slots

    def workload(self, **changes):
        from services.bench.workload import Workload

        return Workload(model=self.model.id, max_tokens=self.options.max_tokens, **changes)

    def measure(self, name: str, target: Target, described: str, levels=None, meter: CpuMeter | None = None, **extra):
        """Warm up, then sweep the levels into a ModeResult registered first, so that a run cut short
        (Ctrl-C, SIGTERM, a level's time limit) still reports the levels it finished."""
        levels = levels or self.options.levels
        result = self.modes[name] = ModeResult(described, [], extra)
        workload = self.workload()
        warm(target, workload)
        counts = {level: self.options.requests_at(level) for level in levels}
        sweep(
            target,
            workload,
            levels,
            counts,
            time_limit_s=self.options.level_time_limit,
            meter=meter,
            into=result.levels,
        )
        return result

    # -- modes --------------------------------------------------------------------------------------
    def direct(self) -> None:
        if self.model.path is None or not self.model.path.exists():
            self.notes.append(f"direct skipped: no llama.cpp weights for {self.model.id} (run `make models`)")
            return
        started = time.monotonic()
        target = DirectTarget(self.model.path, n_ctx=self.model.n_ctx, chat_format=self.model.chat_format)
        load_s = time.monotonic() - started
        try:
            self.measure("direct", target, "llama-cpp-python in this process, one Llama behind a lock", load_s=load_s)
        finally:
            target.close()

    @contextlib.contextmanager
    def stack_target(self) -> Iterator[tuple[HttpTarget, str, CpuMeter | None]]:
        """The running deployment at --url, else a private stack on free ports for this run."""
        connections = max(max(self.options.levels), 1) + 4
        if self.options.url:
            url = require_loopback(self.options.url)
            target = HttpTarget(
                "stack", url, timeout=self.options.timeout, max_connections=connections, api_key=self.options.api_key
            )
            try:
                yield target, f"{url} (running deployment; its CPU counts as others')", None
            finally:
                target.close()
            return
        with private_stack(llama_cpp_worker(self.model.id, self.slots), label="stack", model=self.model.id) as stack:
            target = HttpTarget(
                "stack",
                stack.url,
                timeout=self.options.timeout,
                max_connections=connections,
                api_key=self.options.api_key,
            )
            try:
                yield (
                    target,
                    f"private stack via nginx ({self.settings.api_replicas} API replicas,"
                    f" llama_cpp worker with {self.slots} slot(s))",
                    stack.meter(),
                )
            finally:
                target.close()

    def stack(self, stress: bool) -> None:
        with self.stack_target() as (target, described, meter):
            if "stack" in self.options.modes:
                self.measure("stack", target, described, meter=meter, slots=self.slots)
            if stress:
                if "stack" not in self.options.modes:
                    warm(target, self.workload())
                count = self.options.stress_requests
                level = run_level(
                    target,
                    self.workload(),
                    1,
                    count,
                    time_limit_s=self.options.level_time_limit,
                    meter=meter,
                    label="stress serial",
                )
                self.modes["stress"] = ModeResult(described, [level], {"serial_requests": count})

    def figures(self) -> dict:
        if "stack" not in self.modes or "direct" not in self.modes:
            return {}
        return comparison.stack_vs_direct(self.modes["stack"].levels, self.modes["direct"].levels)
