"""`python -m services.worker`: run an engine worker, or `--check` what this machine would run."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from services.common.catalog import Catalog
from services.common.redis_client import connect
from services.common.settings import settings_or_exit
from services.worker.detect import Facts, choose
from services.worker.engines.factory import ENGINES, EngineUnavailable
from services.worker.process import WorkerProcess


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.worker", description=__doc__)
    p.add_argument("--engine", choices=("auto", *ENGINES), help="default: INFERENCE_ENGINE")
    p.add_argument("--model", action="append", help="model id or alias (repeatable); default: DEFAULT_MODEL")
    p.add_argument("--slots", type=int, help="concurrent requests; default: WORKER_SLOTS")
    p.add_argument("--upstream-url", help="sidecar base URL for llama_server / vllm")
    p.add_argument("--worker-id", help="default: hostname-pid")
    p.add_argument("--metrics-port", type=int, help="Prometheus port, 0 disables; default: WORKER_METRICS_PORT")
    p.add_argument("--check", action="store_true", help="print what was detected and what would run, then exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_or_exit()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    facts = Facts.probe(
        vllm_url=args.upstream_url or settings.vllm_url, llama_server_url=args.upstream_url or settings.llama_server_url
    )
    choice = choose(args.engine or settings.inference_engine, settings.device_type, facts)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    models = args.model or [catalog.default]
    if args.check:
        print(f"detected: {facts}")
        print(f"device: {choice.device}")
        print(f"engines, in order: {', '.join(choice.engines) or 'none'}")
        print("\n".join(f"  - {r}" for r in choice.reasons))
        print(f"models: {', '.join(catalog.resolve(m) for m in models)}")
        return 0 if choice.engines else 1
    for reason in choice.reasons:
        logging.info("engine choice: %s", reason)
    worker = WorkerProcess(
        settings,
        connect(settings.redis_url),
        catalog,
        engines=choice.engines,
        device=choice.device,
        slots=args.slots or settings.worker_slots,
        worker_id=args.worker_id,
        upstream_url=args.upstream_url,
        metrics_port=settings.worker_metrics_port if args.metrics_port is None else args.metrics_port,
    )
    signal.signal(signal.SIGTERM, lambda *_: worker._stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker._stop.set())
    try:
        worker.start(models)
    except EngineUnavailable as exc:
        logging.error("%s", exc)
        worker.stop()
        return 1
    worker.wait()
    logging.info("stopping: draining jobs in flight")
    worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
