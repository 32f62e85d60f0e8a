"""One benchmark run: the modes asked for, in order, collected into one result dict.

Each mode warms its target with one uncounted request (model pages, connection pools, prefix cache),
then sweeps the concurrency levels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import comparison
from bench.cpu import CpuMeter
from bench.direct_target import DirectTarget
from bench.http_target import HttpTarget, require_loopback
from bench.load import combine, run_level, run_part
from bench.options import Options
from bench.stack import private_stack
from bench.summary import LevelSummary
from bench.target import Target
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
        min(settings.n_ctx or spec.context or spec.context_length, spec.context_length),  # N_CTX unset: the model's
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
class Contender:
    """One side of a comparison: a target, how the report names it, and the CPU meter of its processes."""

    name: str
    target: Target
    described: str
    meter: CpuMeter | None = None
    extra: dict = field(default_factory=dict)


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
        from bench.workload import Workload

        return Workload(model=self.model.id, max_tokens=self.options.max_tokens, **changes)

    def measure(self, contenders: list[Contender], levels: Sequence[int] | None = None) -> None:
        """Levels interleaved across the contenders (direct c=1, stack c=1, direct c=2, ...): this kind
        of VM drifts by 10-20 % over minutes, and interleaving lets the drift hit every side alike.
        With --rounds N each level is cut in N parts taken in turn (direct, stack, direct, stack, ...),
        so even a level's own minutes are shared. Each ModeResult is registered before the first level,
        so a run cut short keeps what finished."""
        levels = levels or self.options.levels
        workload = self.workload()
        for contender in contenders:
            warm(contender.target, workload)
            self.modes[contender.name] = ModeResult(contender.described, [], contender.extra)
        index = 0
        for level in levels:
            count = self.options.requests_at(level)
            rounds = max(1, min(self.options.rounds, count // level))
            sizes = [count // rounds + (1 if r < count % rounds else 0) for r in range(rounds)]
            parts: dict[str, list] = {c.name: [] for c in contenders}
            for r, size in enumerate(sizes):
                for contender in contenders:
                    parts[contender.name].append(
                        run_part(
                            contender.target,
                            workload,
                            level,
                            size,
                            first_index=index + sum(sizes[:r]),
                            time_limit_s=self.options.level_time_limit / rounds,
                            meter=contender.meter,
                            label=f"{contender.name} c={level}" + (f" ({r + 1}/{rounds})" if rounds > 1 else ""),
                        )
                    )
            for contender in contenders:
                self.modes[contender.name].levels.append(combine(parts[contender.name], level))
            index += count

    # -- modes --------------------------------------------------------------------------------------
    def direct_target(self) -> DirectTarget | None:
        if self.model.path is None or not self.model.path.exists():
            self.notes.append(f"direct skipped: no llama.cpp weights for {self.model.id} (run `make models`)")
            return None
        return DirectTarget(self.model.path, n_ctx=self.model.n_ctx, chat_format=self.model.chat_format)

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

    def run(self, *, direct: bool, stack: bool, stress: bool) -> None:
        """direct and stack measured side by side (both loaded at once, levels interleaved), then stress."""
        with contextlib.ExitStack() as alive:
            contenders = []
            if direct and (target := self.direct_target()) is not None:
                alive.callback(target.close)
                contenders.append(
                    Contender("direct", target, "llama-cpp-python in this process, one Llama behind a FIFO lock")
                )
            if stack or stress:
                http, described, meter = alive.enter_context(self.stack_target())
                if stack:
                    contenders.append(Contender("stack", http, described, meter, {"slots": self.slots}))
            if contenders:
                self.measure(contenders)
            if stress:
                if not stack:
                    warm(http, self.workload())
                count = self.options.stress_requests
                level = run_level(
                    http,
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
