"""Aggregate tokens/s of MLXEngine (in-process, continuous batching) vs mlx-lm's own server.

Both run the same model, prompts and settings; they take turns, so they never share the CPU.
The server is driven by concurrent HTTP completions on loopback; the engine by concurrent threads.

    .venv/bin/python -m bench.mlx_direct --levels 1,4,8 --tokens 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
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
from services.worker.engines.mlx import MLXEngine

PROMPT = "Story {i}. Write a long story about a lighthouse keeper who finds a message in a bottle:"
"""The number comes first so no two prompts share a prefix: mlx_lm.server's prompt cache would
otherwise skip most of the prefill, and this compares batched decoding."""
MODEL = ROOT / "models" / "mlx" / "gemma-3-270m"
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
)
"""What MLXEngine writes for a tokenizer without a chat template (the converted GGUF has none), given to
mlx_lm.server too so both sides see the same prompt tokens."""


@contextlib.contextmanager
def mlx_server(model: Path, slots: int, log: Path, *, chat_template: str | None = None) -> Iterator[tuple[str, int]]:
    """mlx_lm.server on a free loopback port until the block ends; yields its URL and PID, stopped by PID.

    Requests must name the model "default_model" (or leave it out): any other name makes the server try
    to load that name from the Hub."""
    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--decode-concurrency", str(slots), "--prompt-concurrency", str(slots)]
    if chat_template:
        argv += ["--chat-template", chat_template]
    url = f"http://127.0.0.1:{port}"
    launcher = Launcher(log.parent)
    try:
        proc = launcher.start(log.stem, argv, os.environ, ROOT)
        launcher.wait_ready(log.stem, lambda: httpx.get(f"{url}/v1/models").status_code == 200, 300)
        yield url, proc.pid
    finally:
        launcher.stop_all()


def via_server(url: str, i: int, tokens: int) -> int:
    """One streamed completion from mlx_lm.server; returns completion tokens from its usage."""
    body = {"prompt": PROMPT.format(i=i), "max_tokens": tokens, "temperature": 0.0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    usage = 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=900) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = (json.loads(line[6:]).get("usage") or {}).get("completion_tokens", usage)
    return usage


def via_engine(engine: MLXEngine, i: int, tokens: int) -> int:
    request = GenerationRequest(str(i), PROMPT.format(i=i), SamplingParams(max_tokens=tokens, temperature=0.0))
    return next(x for x in engine.generate(request, lambda: False) if isinstance(x, Finish)).completion_tokens


def level(one: Callable[[int], int], concurrency: int, offset: int) -> float:
    """Aggregate tokens/s with `concurrency` requests started together (fresh prompts: no cache hits)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(one, range(offset, offset + concurrency)))
    return total / (time.perf_counter() - started)


def measure(targets: dict[str, Callable[[int], int]], levels: list[int], repeats: int) -> dict:
    """Median tokens/s per target and level; the targets take turns at each level, so a busy CPU
    (other work on the box) weighs on both alike."""
    for one in targets.values():
        one(-1)  # warm-up: first-call allocations
    runs: dict[str, dict[int, list[float]]] = {name: {c: [] for c in levels} for name in targets}
    for c in levels:
        for r in range(repeats):
            for name, one in targets.items():
                runs[name][c].append(level(one, c, 1000 * c + 100 * r))
    return {name: {c: statistics.median(v) for c, v in by_level.items()} for name, by_level in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "mlx_direct.json")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    slots = max(levels)

    engine = MLXEngine(args.model, slots=slots)
    with mlx_server(args.model, slots, args.out.with_suffix(".server.log")) as (url, _pid):
        engine.load()
        targets = {
            "engine": lambda i: via_engine(engine, i, args.tokens),
            "mlx_lm.server": lambda i: via_server(url, i, args.tokens),
        }
        try:
            results = measure(targets, levels, args.repeats)
        finally:
            engine.unload()

    print(f"aggregate tokens/s, {args.tokens} tokens per request, temperature 0, {args.model.name}")
    print(f"{'concurrency':>12} " + " ".join(f"{name:>14}" for name in results))
    for c in levels:
        print(f"{c:>12} " + " ".join(f"{results[name][c]:>14.2f}" for name in results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"tokens": args.tokens, "model": str(args.model), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
