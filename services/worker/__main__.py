"""`python -m services.worker`: run an engine worker, or `--check` that this machine can run its engines."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from services.common import logs
from services.common.catalog import Catalog
from services.common.live_catalog import LiveCatalog
from services.common.redis_client import from_settings
from services.common.settings import Settings, settings_or_exit
from services.common.supervisor import History
from services.worker import selfcheck, sidecar
from services.worker.detect import Facts, choose
from services.worker.engines.base import EngineUnavailable
from services.worker.engines.factory import ENGINES
from services.worker.llama_servers import LlamaServers
from services.worker.process import WorkerProcess

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.worker", description=__doc__)
    p.add_argument("--engine", choices=("auto", *ENGINES), help="default: INFERENCE_ENGINE")
    p.add_argument("--model", action="append", help="model id or alias (repeatable); default: DEFAULT_MODEL")
    p.add_argument("--slots", type=int, help="concurrent requests; default: WORKER_SLOTS")
    p.add_argument("--upstream-url", help="sidecar base URL for llama_server / vllm")
    p.add_argument(
        "--spawn-llama-server",
        action="store_true",
        help="run llama-server as this worker's child on LLAMA_SERVER_PORT, restarting it when it dies",
    )
    p.add_argument(
        "--on-demand",
        action="store_true",
        help="load any catalog model this worker can when requests wait for it and no worker serves it, within "
        "MEMORY_BUDGET, unloading models idle past their keep_alive (with --spawn-llama-server: a llama-server each)",
    )
    p.add_argument(
        "--sidecar-key-file",
        help="with --spawn-llama-server: write its key here (mode 0600) for the stack's Prometheus to scrape it",
    )
    p.add_argument("--worker-id", help="default: hostname-pid")
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 disables; default: WORKER_METRICS_PORT")
    p.add_argument(
        "--check",
        action="store_true",
        help="print what was detected, then load the model and generate a few tokens on each engine; exit 1 on failure",
    )
    p.add_argument("--probe-engine", choices=ENGINES, help=argparse.SUPPRESS)  # --check's child
    return p.parse_args(argv)


def run_check(settings: Settings, facts: Facts, engine: str, catalog: Catalog, models: list[str]) -> int:
    choice = choose(engine, settings.device_type, facts)
    model_id = catalog.resolve(models[0])
    print(f"detected: {facts}")
    print(f"device: {choice.device}")
    print(f"engines, in order: {', '.join(choice.engines) or 'none'}")
    print("\n".join(f"  - {r}" for r in choice.reasons))
    print(f"model: {model_id}")
    engines = list(choice.engines)
    if engine in ("auto", "llama_server") and (not engines or engines[0] in ("llama_cpp", "llama_server")):
        engines = list(dict.fromkeys(["llama_server", *engines]))  # what `make up` runs on a CPU box
    print("trying each engine (load the model, generate a few tokens):", flush=True)
    results = selfcheck.check(engines, model_id)
    print("\n".join(r if isinstance(r, str) else r.line() for r in results))
    outcomes = [r for r in results if not isinstance(r, str)]
    if not outcomes:
        print("no engine could be tried here: install one (see README, Engines)")
        return 1
    return 0 if all(o.ok for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_or_exit()
    logs.configure(settings, "worker")
    catalog = LiveCatalog.or_exit(settings.models_file, settings.default_model)  # `models add` seen at once
    models = args.model or [catalog.default]
    if args.probe_engine:
        return selfcheck.probe(args.probe_engine, catalog.resolve(models[0]), settings, catalog)
    engine = "llama_server" if args.spawn_llama_server else (args.engine or settings.inference_engine)
    upstream_url = args.upstream_url
    if args.spawn_llama_server:  # a missing GGUF is one line now, not llama-server's exit status later
        missing = catalog.missing_weights(
            catalog.resolve(models[0]), "llama_server", settings.models_dir, str(settings.models_file)
        )
        if missing:
            print(missing, file=sys.stderr)
            return 2
    key = secrets.token_urlsafe(32) if args.spawn_llama_server else ""
    if args.spawn_llama_server:
        upstream_url = f"http://127.0.0.1:{settings.llama_server_port}"  # the first model's llama-server
        if args.sidecar_key_file:
            sidecar.write_key(Path(args.sidecar_key_file), key)
    facts = Facts.probe(
        vllm_url=upstream_url or settings.vllm_url, llama_server_url=upstream_url or settings.llama_server_url
    )
    if args.check:
        return run_check(settings, facts, engine, catalog, models)
    choice = choose(engine, settings.device_type, facts)
    for reason in choice.reasons:
        log.info("engine choice: %s", reason)
    worker = WorkerProcess(
        settings,
        from_settings(settings),
        catalog,
        engines=choice.engines,
        device=choice.device,
        slots=args.slots or settings.worker_slots,
        worker_id=args.worker_id,
        upstream_url=upstream_url,
        metrics_port=settings.worker_metrics_port if args.metrics_port is None else args.metrics_port,
        metrics_host=settings.worker_metrics_host,
        history=History.from_env(os.environ),
        on_demand=args.on_demand,
    )
    if args.spawn_llama_server:
        worker.spawner = LlamaServers(
            settings,
            catalog,
            key=key,
            on_up=worker.engine_up,
            on_down=worker.engine_down,
            log_dir=settings.log_dir,
        )
    signal.signal(signal.SIGTERM, lambda *_: worker._stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker._stop.set())
    try:
        worker.start(models)
    except EngineUnavailable as exc:
        log.error("%s", exc)
        worker.stop()
        return 1
    worker.wait()
    log.info("stopping: draining jobs in flight")
    worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
