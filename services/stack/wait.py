"""`python -m services.stack.wait -- CMD...`: wait until Redis (REDIS_URL) answers, then exec CMD.

Honcho starts every process at once and stops them all when one exits, so a worker that met a
Redis still starting would take the whole stack down; this wrapper orders the start instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import redis


def redis_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
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
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_ready(url, args.timeout):
        print(f"redis at {url.rsplit('@', 1)[-1]} did not answer in {args.timeout:.0f}s", file=sys.stderr)
        return 1
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
