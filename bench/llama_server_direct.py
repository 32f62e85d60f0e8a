"""Aggregate tokens/s of llama-server called directly vs. through OpenAIHTTPEngine, at a few concurrencies.

Shows what the engine layer costs (it should be ~nothing: it only relays the stream) and how far
llama-server's batching scales on this CPU. One server, the same prompts and settings for both paths.

    .venv/bin/python -m bench.llama_server_direct --levels 1,4,8 --tokens 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.launcher import Launcher
from services.common.jobs import SamplingParams
from services.common.ports import free_port
from services.common.settings import ROOT
from services.worker.engines.base import Finish, GenerationRequest
from services.worker.engines.llama_server_process import LlamaServerCommand
from services.worker.engines.openai_http import OpenAIHTTPEngine

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle. Story {i}:"


@contextlib.contextmanager
def serving(cmd: LlamaServerCommand, log: Path) -> Iterator[None]:
    """The server until the block ends, ready when it starts; stopped by its PID, never by name."""
    launcher = Launcher(log.parent)
    try:
        launcher.start(log.stem, cmd.argv(), os.environ, ROOT)
        launcher.wait_ready(log.stem, lambda: httpx.get(f"{cmd.url}/health").status_code == 200, 120)
        yield
    finally:
        launcher.stop_all()


def direct(url: str, i: int, tokens: int) -> int:
    """One streamed completion straight from llama-server; returns completion tokens from its usage."""
    body = {"prompt": PROMPT.format(i=i), "max_tokens": tokens, "temperature": 0.0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
        usage = 0
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = (json.loads(line[6:]).get("usage") or {}).get("completion_tokens", usage)
    return usage


def through_engine(engine: OpenAIHTTPEngine, i: int, tokens: int) -> int:
    request = GenerationRequest(str(i), PROMPT.format(i=i), SamplingParams(max_tokens=tokens, temperature=0.0))
    finish = [item for item in engine.generate(request, lambda: False) if isinstance(item, Finish)]
    return finish[0].completion_tokens


def level(one: Callable[[int], int], concurrency: int, rounds: int) -> float:
    """Aggregate generated tokens/s with `concurrency` requests in flight, `rounds` each."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(one, range(concurrency * rounds)))
    return total / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "gemma-3-270m-q4_k_m.gguf")
    p.add_argument("--levels", default="1,4,8")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="requests per concurrent client")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per level; the best is kept")
    p.add_argument("--threads", type=int, default=0, help="llama-server threads; 0 = its default")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    cmd = LlamaServerCommand(args.model, free_port(), slots=max(levels), slot_context=512, threads=args.threads)
    with serving(cmd, ROOT / "run" / "bench" / f"llama-server-{cmd.port}.log"):
        engine = OpenAIHTTPEngine(cmd.url, name="llama_server", concurrency=max(levels), context=512, timeout=300)
        engine.load()
        direct(cmd.url, -1, args.tokens)  # warm-up
        print(f"{'concurrency':>11} {'direct tok/s':>13} {'engine tok/s':>13} {'ratio':>6}")
        for c in levels:
            raw = via = 0.0
            for _ in range(args.repeats):  # alternate, keep the best: other load on the box hits both alike
                raw = max(raw, level(lambda i: direct(cmd.url, i, args.tokens), c, args.rounds))
                via = max(via, level(lambda i: through_engine(engine, i, args.tokens), c, args.rounds))
            print(f"{c:>11} {raw:>13.1f} {via:>13.1f} {via / raw:>6.2f}", flush=True)
        engine.unload()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
