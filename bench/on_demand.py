"""`--on-demand`: issue 27's figures, a model loaded when asked for beside a warm one, and two models swapped on
one worker with no request lost (the figures and tables: bench/on_demand_figures.py).

A private stack as `make up` runs it (LOAD_ON_DEMAND: the worker starts a llama-server per model) over a models
folder of its own that links the shipped GGUFs, with MEMORY_BUDGET between one model's cost and both's: a
request for the model not loaded makes the worker unload the other and load it, as on a small box with big
models. Both models are loaded once, uncounted, before anything is measured, so every load reads its GGUF from
the page cache alike rather than the first from disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx

from bench import goals
from bench.http_target import HttpTarget
from bench.on_demand_figures import Round, Swapped, figures, over_load, swap_figures, waves
from bench.sample import Sample
from bench.session import ModeResult, Session
from bench.stack import RunningStack, private_stack
from bench.summary import summarize
from bench.workload import Workload
from services.common.catalog import Catalog
from services.common.ports import free_port
from services.common.settings import ROOT, Settings
from services.worker import budget

MODELS = ("gemma-3-270m", "smollm2-135m-instruct")
"""The start model first: it is loaded when the stack is up."""
UNLOAD_WAIT_S = 60.0


def place_models(target: Path) -> Path:
    """A models folder of its own: the catalog copied, the shipped weights and templates linked."""
    target.mkdir(parents=True)
    shutil.copy(ROOT / "models" / "models.yaml", target / "models.yaml")
    catalog = Catalog.from_yaml(target / "models.yaml")
    for model in MODELS:
        path = catalog.path_for(model, "llama_server", ROOT / "models")
        if path is None or not path.exists():
            raise SystemExit(f"bench --on-demand: no llama-server weights for {model} (run `make models`)")
        (target / path.name).symlink_to(path)
    (target / "templates").symlink_to(ROOT / "models" / "templates")
    return target


def one_only(models_dir: Path, slots: int, cap: int | None) -> tuple[int, dict[str, int]]:
    """A budget that holds the bigger model alone but not both: the biggest cost + half the smallest; each
    cost as the worker computes it (services/worker/budget.py)."""
    catalog = Catalog.from_yaml(models_dir / "models.yaml")
    each = {}
    for model in MODELS:
        path = catalog.path_for(model, "llama_server", models_dir)
        assert path is not None
        spec = catalog.models[model]
        trained = budget.trained_context(path) or spec.context_length
        wanted = min(spec.context or trained, trained)
        each[model] = budget.cost(path, slots=slots, wanted=wanted, cap=cap, budget=2**40).total
    return max(each.values()) + min(each.values()) // 2, each


class Bench:
    """The requests of one run, numbered so consecutive ones ask for different prompts; the worker's `loaded`
    read from /v1/system/status on an API replica's own port (a loopback caller reads it without an admin key)."""

    def __init__(self, session: Session, stack: RunningStack) -> None:
        self.options = session.options
        self.status_url = f"{stack.api_urls[0]}/v1/system/status"
        self.status = httpx.Client(timeout=10)
        common = {"timeout": self.options.timeout, "api_key": self.options.api_key}
        self.target = HttpTarget("on-demand", stack.url, max_connections=self.options.swap_concurrency + 2, **common)
        # Ollama's keep_alive 0: the model is unloaded as soon as it is idle
        self.release = HttpTarget("on-demand-release", stack.url, body_overrides={"keep_alive": "0"}, **common)
        self.index = 0

    def loaded(self) -> dict:
        workers = self.status.get(self.status_url).json()["workers"]
        return next((w.get("loaded") or {} for w in workers if w.get("on_demand")), {})

    def wait_loaded(self, check, what: str, timeout: float = UNLOAD_WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = self.loaded()
            if check(held):
                return held
            time.sleep(0.2)
        raise RuntimeError(f"bench --on-demand: {what} not seen in /v1/system/status after {timeout:.0f} s")

    def send(self, model: str, target: HttpTarget | None = None) -> Sample:
        self.index += 1
        return (target or self.target).send(Workload(model=model, max_tokens=self.options.max_tokens), self.index)

    def must(self, model: str, target: HttpTarget | None = None) -> Sample:
        sample = self.send(model, target)
        if not sample.ok:
            raise RuntimeError(f"bench --on-demand: a request for {model} failed: {sample.error}")
        return sample

    def rounds(self, series: str) -> list[Round]:
        """Warm then cold, the models taking turns; `free`: the warm request releases its model (keep_alive 0)
        and the cold one is sent once the worker holds nothing."""
        out = []
        warm, cold = MODELS if MODELS[0] in self.loaded() else MODELS[::-1]
        for i in range(self.options.on_demand_rounds):
            w = self.must(warm, self.release if series == "free" else None)
            if series == "free":
                self.wait_loaded(lambda held: not held, f"{warm} unloaded after keep_alive 0")
            c = self.must(cold)
            held = self.wait_loaded(lambda held, m=cold: m in held, f"{cold} loaded")
            r = Round(warm, w.ttft_s, cold, c.ttft_s, held[cold].get("loaded_s"))
            print(
                f"on-demand {series} round {i + 1}: warm {warm} TTFT {r.warm_ttft_s or 0:.2f} s; cold {cold} TTFT"
                f" {r.cold_ttft_s or 0:.2f} s, its load {r.load_s or 0:.2f} s",
                flush=True,
            )
            out.append(r)
            warm, cold = cold, warm
        return out

    def swap_run(self) -> tuple[list[Swapped], float]:
        count, concurrency = self.options.swap_requests, self.options.swap_concurrency
        out: list[Swapped] = []
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for wave in waves(count, concurrency):
                held = self.loaded()
                models = [MODELS[i % 2] for i in wave]
                samples = list(pool.map(self.send, models))
                out += [Swapped(m, m not in held, s) for m, s in zip(models, samples, strict=True)]
        return out, time.perf_counter() - started

    def close(self) -> None:
        self.target.close()
        self.release.close()
        self.status.close()


@contextlib.contextmanager
def on_demand_stack(settings: Settings, slots: int) -> Iterator[tuple[RunningStack, str, int]]:
    """The private stack with its own models folder, removed after (a failed run keeps the stack's logs)."""
    models_dir = place_models(ROOT / "run" / f"bench-on-demand-models-{free_port()}")
    try:
        limit, each = one_only(models_dir, slots, settings.n_ctx)
        worker = ["-m", "services.worker", "--engine", "llama_server", "--model", MODELS[0], "--slots", str(slots)]
        overrides = {
            "load_on_demand": True,
            "memory_budget": str(limit),
            "keep_alive": "-1",  # swaps come from the budget and the requests' keep_alive, never from a timer
            "models_dir": models_dir,
            "models_file": models_dir / "models.yaml",
            "llama_server_port": free_port(),
            "llama_server_parallel": slots,
        }
        argv = [*worker, "--spawn-llama-server", "--on-demand"]
        with private_stack(argv, label="on-demand", model=MODELS[0], **overrides) as stack:
            costs = ", ".join(f"{m} {c / 2**20:.0f} MiB" for m, c in each.items())
            described = (
                f"private stack via nginx, one on-demand worker, llama-server with {slots} slot(s) per model,"
                f" MEMORY_BUDGET {limit / 2**20:.0f} MiB ({costs})"
            )
            yield stack, described, limit
    finally:
        shutil.rmtree(models_dir, ignore_errors=True)


def run_on_demand(session: Session) -> None:
    options = session.options
    slots = options.slots or session.settings.llama_server_parallel
    load_before = os.getloadavg()[0]
    with on_demand_stack(session.settings, slots) as (stack, described, limit):
        bench = Bench(session, stack)
        try:
            for model in (*MODELS, MODELS[0]):  # uncounted: each GGUF read once, connections opened
                bench.must(model)
            series = {"full": bench.rounds("full"), "free": bench.rounds("free")}
            swapped, wall = bench.swap_run()
        finally:
            bench.close()
    swap = swap_figures(swapped)
    load = {"start": load_before, "end": os.getloadavg()[0], "cores": os.cpu_count() or 1}
    if max(load["start"], load["end"]) > load["cores"] / 2:  # the bench and its stack alone stay near one core
        session.notes.append(
            f"on-demand: WARNING: load average {load['start']:.1f} at the start, {load['end']:.1f} at the end on"
            f" {load['cores']} cores: other processes shared the CPU, these figures are disturbed"
        )
    session.modes["on-demand-swap"] = ModeResult(
        f"{described}; {options.swap_requests} requests alternating between {' and '.join(MODELS)}, the first"
        f" half one at a time, then {options.swap_concurrency} at once",
        [summarize([s.sample for s in swapped], options.swap_concurrency, wall)],
        {"swap": swap},
    )
    session.extra_figures["on_demand"] = {
        "stack": described,
        "memory_budget": limit,
        "series": {name: [asdict(r) for r in rounds] for name, rounds in series.items()},
        "over_load_s": {name: over_load(rounds) for name, rounds in series.items()},
        "swap": swap,
        "load_average": load,
        "goals": goals.to_json(figures(series, swap)),
    }
