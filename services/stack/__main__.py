"""`python -m services.stack up`: the whole stack on this machine without Docker (what `make up` runs).

Also `config` (print the processes and URLs) and `check` (nginx -t on the rendered config, and the
checked-in monitoring/prometheus.yml is current).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from services.common import logs
from services.common.settings import settings_or_exit
from services.stack import nginx_conf, prometheus_conf, redis_conf, supervise
from services.stack.binaries import MissingBinary
from services.stack.procfile import prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stack", description=__doc__)
    parser.add_argument("command", choices=("up", "config", "check"))
    parser.add_argument("--no-worker", action="store_true", help="no engine worker here (it runs on another box)")
    args = parser.parse_args(argv)
    os.umask(0o077)  # configs, the password file and every log the stack writes: its owner's only
    settings = settings_or_exit()
    logs.configure(settings, "stack")  # what it prints is for the person at the console; library lines go here
    if args.command == "check":
        problems = nginx_conf.check(settings) + prometheus_conf.check()
        print("\n".join(problems) or "stack config OK", file=sys.stderr if problems else sys.stdout)
        return 1 if problems else 0
    try:
        stack = prepare(settings, worker=not args.no_worker)
    except (MissingBinary, nginx_conf.NginxConfigError, redis_conf.RedisConfigError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "config":
        for proc in stack.procs:
            print(f"{proc.name}: {shlex.join(proc.argv)}")
        print(f"public: {stack.public_url}\nprometheus: {stack.prometheus_url}\nlogs: {stack.layout.log_dir}")
        return 0
    print(nginx_conf.exposure_note(settings))
    print(f"serving on {stack.public_url} (prometheus {stack.prometheus_url}); logs in {stack.layout.log_dir}")
    return supervise.run(stack.procs, stack.layout)


if __name__ == "__main__":
    sys.exit(main())
