"""`python -m services.stack.wait -- CMD...`: wait until Redis (REDIS_URL) answers, then exec CMD.

The launcher starts every process at once; a worker or replica that met a Redis still starting would die
and be restarted after a backoff, so this wrapper orders the start instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import redis

from services.common import logs
from services.common.redis_client import from_settings
from services.common.settings import Settings, settings_or_exit

log = logging.getLogger("services.stack.wait")


def redis_ready(settings: Settings, timeout: float) -> bool:
    """Whether Redis (REDIS_URL, or the master REDIS_SENTINELS name) answers a PING within `timeout`."""
    deadline = time.monotonic() + timeout
    client = from_settings(settings, max_connections=2, longest_block=0.0, socket_timeout=1.0)
    while time.monotonic() < deadline:
        try:
            return bool(client.ping())
        except redis.AuthenticationError:
            raise  # a wrong password will not fix itself: fail now, not after the timeout
        except redis.ConnectionError:  # refused, or BusyLoadingError while it loads
            time.sleep(0.1)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack.wait", description=__doc__)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command to exec")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command after --")
    settings = settings_or_exit()
    logs.configure(settings, "wait")
    if not redis_ready(settings, args.timeout):
        where = settings.redis_sentinels or settings.redis_url.rsplit("@", 1)[-1]
        log.error("redis at %s did not answer in %.0fs", where, args.timeout)
        return 1
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
