"""Run the native stack's processes, each under a Supervisor of its own: one failure stays one failure.

Redis, the API replicas, the workers, nginx, the exporters and Prometheus each run under a Supervisor
(services/common/supervisor.py) in this launcher: one that dies is restarted with backoff (1 s doubling to
30 s; three deaths in a minute are logged as a crash loop) while the others keep serving. honcho, which ran
them before, stopped every process when any one exited and restarted none, so a kill -9 of one replica's
gunicorn master ended the whole stack. A Supervisor per process in one launcher is simpler than a wrapper
process per process under honcho: no extra interpreter per process, and nothing can exit on its own and
take the rest down. The worker still runs inside services/stack/respawn.py (it is in its command line, so
the e2e tests' one-by-one start restarts it too), which removes a dead worker's registry record at once.

The stack stops only when asked: Ctrl-C or SIGTERM stops every process at once with STOP_GRACE_S before
SIGKILL (room for a worker's drain), then Redis, which the draining workers still write to. Children die
with the launcher should it be killed (PR_SET_PDEATHSIG).

Each process writes straight to LOG_DIR/<name>.log; the console follows those files (console.py). The
launcher's own lines (starts, deaths, restarts) go to the console and to LOG_DIR/stack.log, and the PID of
each process, rewritten as each one (re)starts, to RUN_DIR/stack.pids (JSON).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from services.common.supervisor import Policy, Supervisor
from services.stack import respawn
from services.stack.console import Console
from services.stack.layout import Layout
from services.stack.procfile import Proc

log = logging.getLogger(__name__)

STOP_GRACE_S = respawn.STOP_GRACE_S + 10
"""Seconds between SIGTERM and SIGKILL: longer than the worker's own drain inside respawn."""

POLICY = Policy(first=1.0, cap=30.0, window=60.0, loop_after=3, stable_after=60.0, ready_timeout=300.0)
"""ready_timeout: a process whose ready URL gives no answer at all this long after its start is killed and
started again; generous, since a worker may wait for Redis and then load its model first."""


def answers_http(url: str) -> bool:
    """Any HTTP answer means the process listens (an API's /health says 503 until a worker beats)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2)
    try:
        conn.request("GET", parts.path or "/")
        conn.getresponse().read()
    finally:
        conn.close()
    return True


class PidFile:
    """RUN_DIR/stack.pids: each process's current PID, for an operator (or a test) to find it by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()

    def set(self, name: str, pid: int | None) -> None:
        with self._lock:
            if pid is None:
                self._pids.pop(name, None)
            else:
                self._pids[name] = pid
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._pids, indent=1) + "\n")
            os.replace(tmp, self.path)


def supervisor(proc: Proc, layout: Layout, pids: PidFile) -> Supervisor:
    """`proc` kept running, its output appended to its log file."""
    ready_url = proc.ready_url
    sup = Supervisor(
        proc.name,
        proc.argv,
        log_path=layout.log(proc.name),
        env=proc.env,
        cwd=proc.cwd,
        ready=(lambda: answers_http(ready_url)) if ready_url else (lambda: True),
        policy=POLICY,
    )
    sup.on_up = lambda: pids.set(proc.name, sup.pid)
    return sup


def stop_all(supervisors: Sequence[Supervisor], grace: float = STOP_GRACE_S) -> None:
    """Every process at once, Redis last: workers draining their slots still publish to it."""
    last = [s for s in supervisors if s.name == "redis"]
    first = [s for s in supervisors if s.name != "redis"]
    for group in (first, last):
        threads = [threading.Thread(target=s.stop, args=(grace,), name=f"stop-{s.name}") for s in group]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _also_to_file(path: Path) -> logging.Handler:
    """The launcher's records to `path` as well, formatted and filtered as on the console."""
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)
        for f in root.handlers[0].filters:
            handler.addFilter(f)
    root.addHandler(handler)
    return handler


def run(procs: Sequence[Proc], layout: Layout, output: IO[str] = sys.stdout) -> int:
    """Block until SIGINT or SIGTERM, keeping every process running; then stop them all. Returns 0."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    file_handler = _also_to_file(layout.log("stack"))
    pids = PidFile(layout.pids_file)
    console = Console({p.name: layout.log(p.name) for p in procs}, output)
    console.start()
    supervisors = [supervisor(p, layout, pids) for p in procs]
    try:
        for sup in supervisors:
            sup.start()
        while not stopping.wait(1.0):
            pass
        log.info("stopping %d processes (up to %.0f s for workers to drain)", len(supervisors), STOP_GRACE_S)
    finally:
        stop_all(supervisors)
        console.stop()
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()
    return 0
