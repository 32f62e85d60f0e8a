"""`--engines`: aggregate tokens/s at a few concurrencies for every engine this machine can run,
through the whole stack, beside the same engine called directly in the same run.

Direct means: llama-cpp-python in this process (one Llama behind a lock) for llama_cpp, HTTP straight
to llama-server for llama_server, and HTTP straight to mlx-lm's own server (`mlx_lm.server`, same
weights, same slots, same prompt format) for mlx. The c=max/c=1 ratio shows whether an engine batches
(llama-server, MLX) or serves one request at a time; stack/direct shows what the gateway costs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from bench.cpu import CpuMeter
from bench.direct_target import DirectTarget
from bench.http_target import HttpTarget
from bench.launcher import Launcher
from bench.mlx_direct import GEMMA_TEMPLATE, mlx_server
from bench.options import ENGINES
from bench.session import Contender, Session
from bench.stack import private_stack
from bench.summary import LevelSummary
from services.common.catalog import Catalog
from services.common.ports import free_port
from services.common.settings import ROOT


@dataclass(frozen=True)
class EngineRow:
    engine: str
    path: str  # "stack" or "direct"
    levels: list[LevelSummary]

    def at(self, concurrency: int) -> LevelSummary | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)


@contextlib.contextmanager
def llama_server(
    model_path, *, slots: int, slot_context: int, chat_format: str | None, alias: str, nice: int = 0
) -> Iterator[tuple[str, int]]:
    """A llama-server sidecar on a free port for this run, at the stack's niceness (LLAMA_SERVER_NICE), which
    the direct side meets too; yields its base URL and PID (for CPU)."""
    from services.worker.engines.llama_server_process import LlamaServerCommand

    cmd = LlamaServerCommand(
        model_path,
        free_port(),
        slots=slots,
        slot_context=slot_context,
        chat_template=chat_format,
        alias=alias,
        nice=nice,
    )
    launcher = Launcher(ROOT / "run" / f"bench-llama-server-{cmd.port}")
    try:
        proc = launcher.start("llama-server", cmd.argv(), os.environ, ROOT)
        launcher.wait_ready("llama-server", lambda: httpx.get(f"{cmd.url}/health", timeout=2).status_code == 200, 180)
        yield cmd.url, proc.pid
    finally:
        launcher.stop_all()


def apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def availability(mlx_cpu: bool = False, wanted: tuple[str, ...] = ENGINES) -> dict[str, str | None]:
    """Engine -> None when it can run here, else why not (printed, so a skipped engine is never silent).

    MLX off Apple Silicon is mlx[cpu]: the real code path, but ~10x slower than llama.cpp on the same
    CPU, so its figures say nothing about MLX and would stretch the run by many minutes; opt in.
    """
    from services.worker.engines.llama_server_process import LlamaServerMissing, find_binary

    reasons: dict[str, str | None] = {
        "llama_cpp": None if importlib.util.find_spec("llama_cpp") else "llama-cpp-python is not installed",
        "mlx": None if importlib.util.find_spec("mlx") else "mlx is not installed",
    }
    if reasons["mlx"] is None and not (apple_silicon() or mlx_cpu):
        reasons["mlx"] = "not Apple Silicon (mlx[cpu] is a correctness path here; --mlx-cpu measures it anyway)"
    try:
        find_binary()
        reasons["llama_server"] = None
    except LlamaServerMissing as exc:
        reasons["llama_server"] = str(exc)
    return {engine: reasons[engine] for engine in ENGINES if engine in wanted}


def run_engines(session: Session) -> None:
    """Fills session.modes with engine-<name>-<path> entries and session.extra_figures['engines']."""
    options, settings, model = session.options, session.settings, session.model
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    slots = options.engine_slots
    levels = options.engine_levels
    rows: list[EngineRow] = []

    def side_by_side(
        engine: str,
        worker_argv: list[str],
        described: str,
        direct: Contender | None = None,
        sidecar: dict[str, list[int]] | None = None,
    ) -> None:
        """The engine through a private stack, and (when given) the same engine called directly, both
        alive at once and measured level by level in turn."""
        with contextlib.ExitStack() as alive:
            stack = alive.enter_context(private_stack(worker_argv, label=f"engine-{engine}", model=model.id))
            http = HttpTarget(engine, stack.url, timeout=options.timeout, max_connections=max(levels) + 4)
            alive.callback(http.close)
            meter = CpuMeter({**stack.meter().groups, **(sidecar or {})})
            contenders = [Contender(f"engine-{engine}-stack", http, f"{described} via nginx", meter)]
            if direct is not None:
                alive.callback(direct.target.close)
                contenders.append(direct)
            for contender in contenders:
                contender.extra["slots"] = slots
            session.measure(contenders, levels)
        for contender in contenders:
            rows.append(EngineRow(engine, contender.name.rsplit("-", 1)[1], session.modes[contender.name].levels))

    worker = ["-m", "services.worker", "--model", model.id, "--slots", str(slots), "--engine"]
    for engine, reason in availability(options.mlx_cpu, options.engine_list).items():
        if reason:
            session.notes.append(f"engines: {engine} skipped: {reason}")
            continue
        if engine == "llama_cpp" and model.path is not None and model.path.exists():
            direct = DirectTarget(model.path, n_ctx=model.n_ctx, chat_format=model.chat_format)
            side_by_side(
                engine,
                [*worker, "llama_cpp"],
                f"llama_cpp worker, {slots} slots",
                Contender("engine-llama_cpp-direct", direct, "llama-cpp-python in-process, one Llama, FIFO lock"),
            )
        elif engine == "llama_server" and model.path is not None and model.path.exists():
            with llama_server(
                model.path,
                slots=slots,
                slot_context=model.n_ctx,
                chat_format=model.chat_format,
                alias=model.id,
                nice=settings.llama_server_nice,
            ) as (url, pid):
                raw = HttpTarget("llama-server", url, timeout=options.timeout, max_connections=max(levels) + 4)
                sidecar = {"llama-server": [pid]}
                side_by_side(
                    engine,
                    [*worker, "llama_server", "--upstream-url", url],
                    f"llama_server worker over llama-server --parallel {slots}",
                    Contender(
                        "engine-llama_server-direct",
                        raw,
                        f"llama-server --parallel {slots} over HTTP",
                        CpuMeter(sidecar),
                    ),
                    sidecar,
                )
        elif engine == "mlx":
            mlx_path = catalog.path_for(model.id, "mlx", settings.models_dir)
            if mlx_path is None or not mlx_path.exists():
                session.notes.append(f"engines: mlx skipped: no MLX weights for {model.id} (make models-mlx)")
                continue
            template = GEMMA_TEMPLATE if model.chat_format == "gemma" else None
            log = ROOT / "run" / "bench-mlx-server.log"
            with mlx_server(mlx_path, slots, log, chat_template=template) as (url, pid):
                raw = HttpTarget(
                    "mlx_lm.server",
                    url,
                    timeout=options.timeout,
                    max_connections=max(levels) + 4,
                    body_overrides={"model": "default_model"},
                )
                sidecar = {"mlx_lm.server": [pid]}
                side_by_side(
                    engine,
                    [*worker, "mlx"],
                    f"mlx worker, {slots} slots (continuous batching)",
                    Contender("engine-mlx-direct", raw, f"mlx_lm.server, {slots} decode slots", CpuMeter(sidecar)),
                )
    session.extra_figures["engines"] = figures(rows, levels)
    session.notes.extend(text(rows, levels))


def figures(rows: list[EngineRow], levels) -> dict:
    low, high = min(levels), max(levels)
    out: dict = {}
    for row in rows:
        a, b = row.at(low), row.at(high)
        entry = out.setdefault(row.engine, {})
        entry[row.path] = {lv.concurrency: lv.tokens_per_s for lv in row.levels}
        if a and b and a.tokens_per_s:
            entry[f"{row.path}_scaling_c{high}_over_c{low}"] = b.tokens_per_s / a.tokens_per_s
    for entry in out.values():
        if "stack" in entry and "direct" in entry:
            entry["stack_over_direct"] = {
                c: entry["stack"][c] / entry["direct"][c] for c in entry["stack"] if entry["direct"].get(c)
            }
    return out


def text(rows: list[EngineRow], levels) -> list[str]:
    """A Markdown table: tokens/s per level, scaling, and stack/direct at each level."""
    low, high = min(levels), max(levels)
    head = ["engine", "path", *[f"tok/s c={c}" for c in levels], f"c={high}/c={low}", "stack/direct"]
    lines = ["", "engines (aggregate generated tokens/s):", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r.engine, r.path): r for r in rows}
    for row in rows:
        cells = [row.engine, row.path]
        cells += [f"{lv.tokens_per_s:.1f}" if (lv := row.at(c)) else "-" for c in levels]
        a, b = row.at(low), row.at(high)
        cells.append(f"{b.tokens_per_s / a.tokens_per_s:.2f}x" if a and b and a.tokens_per_s else "-")
        direct = by.get((row.engine, "direct"))
        if row.path == "stack" and direct:
            ratios = []
            for c in levels:
                s, d = row.at(c), direct.at(c)
                ratios.append(f"{s.tokens_per_s / d.tokens_per_s:.2f}" if s and d and d.tokens_per_s else "-")
            cells.append(" / ".join(ratios) + f" (c={','.join(map(str, levels))})")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
