"""`python -m bench.instant_worker`: a real worker process whose engine answers instantly.

The normal worker CLI cannot run the instant engine; this entry builds the same WorkerProcess with
an engine factory that returns it, so the queue, slots, heartbeat and event stream are the real ones.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from bench.instant_engine import InstantEngine
from services.common.catalog import Catalog
from services.common.redis_client import from_settings
from services.common.settings import settings_or_exit
from services.worker.engines.base import Engine
from services.worker.process import WorkerProcess


def instant_factory(engine: str, model_id: str, *, slots: int, **_: object) -> Engine:
    return InstantEngine(slots=slots)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instant_worker", description=__doc__)
    parser.add_argument("--model", help="model id to pretend to serve; default: DEFAULT_MODEL")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--worker-id")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    worker = WorkerProcess(
        settings,
        from_settings(settings),
        catalog,
        engines=("instant",),
        device="none",
        slots=args.slots,
        worker_id=args.worker_id,
        metrics_port=args.metrics_port,
        engine_factory=instant_factory,
    )
    signal.signal(signal.SIGTERM, lambda *_: worker._stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker._stop.set())
    worker.start([args.model or catalog.default])
    worker.wait()
    worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
