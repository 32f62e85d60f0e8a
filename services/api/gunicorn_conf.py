"""Gunicorn settings from our Settings: gthread workers (streams hold a thread), multiprocess metrics.

PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported in the workers, so it is
set here, in the master, and emptied at start; dead workers' files are marked on exit.
"""

import os
import shutil
import tempfile

from gunicorn.glogging import Logger

from services.api.limits.exposure import open_problem
from services.common import logs
from services.common.settings import load_settings

_settings = load_settings()

workers = _settings.workers
worker_class = "gthread"
threads = _settings.api_threads
timeout = int(_settings.request_timeout) + 60
graceful_timeout = 30
keepalive = 75
loglevel = _settings.log_level.lower()
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}i)s'


class JsonLogger(Logger):
    """gunicorn's own lines (the master's boot and worker exits, the access log) through services.common.logs;
    each worker configures its own handlers again in services.api.wsgi.create()."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        logs.configure(_settings, os.environ.get("API_REPLICA", "api"))


logger_class = JsonLogger
bind = [f"{_settings.host}:{_settings.api_base_port}"]

_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="api-metrics-")


def on_starting(server) -> None:
    problem = open_problem(_settings, server.cfg.address)
    if problem:  # before any socket is bound; gunicorn prints "Error: ..." and exits with status 1
        raise RuntimeError(problem)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def on_exit(server) -> None:
    """A directory we made ourselves goes with us; one given to us belongs to whoever gave it."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
