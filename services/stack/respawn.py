"""`python -m services.stack.respawn NAME -- ARGV...`: run a worker of the native stack, restarting it.

The launcher restarts every process of the stack (services/stack/supervise.py), but a worker needs one
thing more, so it runs under this wrapper: when an in-process engine takes the worker down (SIGSEGV,
SIGILL, the OOM killer) the death is logged in one line with its signal, the dead worker's registry record
is removed at once (its clients get a 503 within a keep-alive tick instead of waiting for the heartbeat to
expire), and the worker is started again with backoff. The wrapper is in the worker's command line, so the
e2e tests, which start the stack's processes one by one without the launcher, get the same. SIGTERM and
SIGINT are passed on, and the wrapper exits with the child.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading

import redis

from services.common import logs
from services.common.redis_client import from_settings
from services.common.registry import Registry, default_worker_id
from services.common.settings import settings_or_exit
from services.common.supervisor import Supervisor

log = logging.getLogger("respawn")

STOP_GRACE_S = 60.0
"""Time the child gets to drain after SIGTERM; the launcher's grace (supervise.STOP_GRACE_S) is longer."""


def forget_worker(registry: Registry, pid: int | None) -> None:
    """A dead worker's record would keep its models in /v1/models until its TTL: drop it now."""
    if pid is None:
        return
    try:
        registry.remove(default_worker_id(socket.gethostname(), pid))
    except redis.RedisError as exc:
        log.warning("could not remove the dead worker's record: %s", exc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.stack.respawn", description=__doc__)
    p.add_argument("name")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        p.error("give the command after --")
    settings = settings_or_exit()
    logs.configure(settings, f"respawn-{args.name}")
    registry = Registry(from_settings(settings), settings.heartbeat_ttl)
    child = Supervisor(args.name, command)
    child.on_down = lambda _reason: forget_worker(registry, child.pid)
    stopping = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    child.start()
    while not stopping.wait(0.5):
        pass
    log.info("stopping %s (pid %s)", args.name, child.pid)
    code = child.stop(STOP_GRACE_S)
    return 0 if code in (None, 0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
