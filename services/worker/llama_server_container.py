"""`python -m services.worker.llama_server_container --model ID`: llama-server as a container's main process.

Compose runs llama-server in a container of its own beside its worker. Its command line comes from the same
place as the one the native worker spawns (`sidecar.command`: models.yaml's file, alias, chat template and
context, DEFAULT_MODEL or --model), so changing the model is a setting in `.env`, never an edit of
docker-compose.yml. This process only builds that command and execs llama-server: the container's pid 1 is
llama-server itself, which gets `docker stop`'s signal and whose exit is the container's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from services.common.catalog import Catalog
from services.common.errors import ModelNotFound
from services.common.settings import settings_or_exit
from services.worker import sidecar
from services.worker.engines.llama_server_process import find_binary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.worker.llama_server_container", description=__doc__)
    p.add_argument("--model", help="model id or alias; default: DEFAULT_MODEL")
    p.add_argument("--host", default="0.0.0.0", help="listen address (the compose network; nothing publishes it)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--slots", type=int, help="requests decoded together; default: LLAMA_SERVER_PARALLEL")
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_or_exit()
    if args.slots:
        settings = settings.model_copy(update={"llama_server_parallel": args.slots})
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    try:
        cmd = sidecar.command(settings, catalog, args.model)
    except (ModelNotFound, ValueError) as exc:
        print(f"llama-server: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    if not cmd.model_path.is_file():
        print(f"llama-server: {cmd.model_path} is missing (run `make models` on the host)", file=sys.stderr)
        return 2
    # Not niced: a container is a cgroup of its own, and nice orders threads only within theirs.
    cmd = dataclasses.replace(cmd, host=args.host, port=args.port, nice=0)
    argv_ = cmd.argv(find_binary())
    if args.print:
        print(" ".join(argv_))
        return 0
    # llama-server never talks to Redis: the password stays out of its environment. Its key, when compose gives
    # one, is LLAMA_API_KEY there (llama-server's own name for it; every route but /health then needs it).
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_") and k != "LLAMA_SERVER_API_KEY"}
    os.execve(argv_[0], argv_, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
