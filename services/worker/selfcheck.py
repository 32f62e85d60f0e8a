"""`python -m services.worker --check`: can this machine really run its engines? Load, generate, say.

Each engine is tried in a child process, because the failures that matter here kill the process: a
llama.cpp built for another CPU dies on its first matrix multiply with SIGILL or SIGSEGV. The parent
reports the signal and the fix, so an unusable build is found in seconds by `make up`, not by a user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from services.common.catalog import Catalog
from services.common.jobs import SamplingParams
from services.common.ports import free_port
from services.common.settings import Settings
from services.common.supervisor import answers, describe_exit, hint
from services.worker import sidecar
from services.worker.engines.base import Engine, Finish, GenerationRequest, TokenChunk
from services.worker.engines.factory import build_engine
from services.worker.engines.llama_server_process import LlamaServerMissing, find_binary

TOKENS = 8
CHILD_TIMEOUT = 240.0
PACKAGES = {"llama_cpp": "llama_cpp", "mlx": "mlx_lm"}


@dataclass(frozen=True)
class Outcome:
    engine: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"  {mark} {self.engine}: {self.detail}" + (f"\n       fix: {self.fix}" if self.fix else "")


def installed(engine: str) -> str | None:
    """None if the engine can be tried here, else why not (a skip, not a failure)."""
    if engine == "llama_server":
        try:
            find_binary()
        except LlamaServerMissing:
            return "llama-server is not installed"
        return None
    if engine == "vllm":
        return "vLLM runs as a sidecar: checked when the worker connects to VLLM_URL"
    package = PACKAGES.get(engine)
    if package and importlib.util.find_spec(package) is None:
        return f"the {package} package is not installed"
    return None


def check(engines: list[str], model_id: str) -> list[Outcome | str]:
    """Try each engine in a child; a str in the result is a skipped engine's reason."""
    results: list[Outcome | str] = []
    for engine in engines:
        missing = installed(engine)
        if missing:
            results.append(f"  skip {engine}: {missing}")
            continue
        results.append(_in_child(engine, model_id))
    return results


def _in_child(engine: str, model_id: str, argv: list[str] | None = None) -> Outcome:
    argv = argv or [sys.executable, "-m", "services.worker", "--probe-engine", engine, "--model", model_id]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Outcome(engine, False, f"no answer within {CHILD_TIMEOUT:.0f} s")
    report = _last_json(done.stdout)
    if done.returncode == 0 and report is not None:
        return Outcome(engine, True, report["detail"])
    if done.returncode < 0 or (report and report.get("signal")):
        code = done.returncode if done.returncode < 0 else -int(report["signal"])
        return Outcome(engine, False, describe_exit(code), hint(code) or "")
    detail = (report or {}).get("detail") or (done.stderr.strip().splitlines() or ["no output"])[-1]
    return Outcome(engine, False, detail, (report or {}).get("fix", ""))


def _last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    return None


# -- the child ----------------------------------------------------------------------------------


def probe(engine: str, model_id: str, settings: Settings, catalog: Catalog) -> int:
    """Child side: load, generate TOKENS greedy tokens, print one JSON line. Exit 0 if it worked."""
    started = time.monotonic()
    try:
        with _engine(engine, model_id, settings, catalog) as loaded:
            load_s = time.monotonic() - started
            tokens, gen_s = _generate(loaded)
    except subprocess.CalledProcessError as exc:  # the sidecar died: its signal is the news
        print(json.dumps({"detail": describe_exit(exc.returncode), "signal": max(0, -exc.returncode)}))
        return 1
    except Exception as exc:
        print(json.dumps({"detail": f"{type(exc).__name__}: {exc}"}))
        return 1
    rate = tokens / gen_s if gen_s > 0 else 0.0
    print(json.dumps({"detail": f"loaded in {load_s:.1f} s, {tokens} tokens at {rate:.0f} tokens/s"}))
    return 0


@contextlib.contextmanager
def _engine(engine: str, model_id: str, settings: Settings, catalog: Catalog) -> Iterator[Engine]:
    """The engine loaded (behind a llama-server of its own for llama_server), unloaded on exit."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_llama_server(model_id, settings, catalog)) if engine == "llama_server" else None
        built = build_engine(engine, model_id, catalog=catalog, settings=settings, slots=1, upstream_url=url)
        built.load()
        stack.callback(built.unload)
        yield built


@contextlib.contextmanager
def _llama_server(model_id: str, settings: Settings, catalog: Catalog) -> Iterator[str]:
    """The stack's own llama-server command for the model, on a free port with one small slot."""
    cmd = dataclasses.replace(
        sidecar.command(settings, catalog, model_id), port=free_port(), slots=1, slot_context=1024
    )
    if not cmd.model_path.exists():
        raise FileNotFoundError(f"{cmd.model_path} is missing (run `make models`)")
    proc = subprocess.Popen(cmd.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not answers(lambda: sidecar.healthy(cmd.url)):
            if proc.poll() is not None:
                raise subprocess.CalledProcessError(proc.returncode, cmd.argv())
            if time.monotonic() > deadline:
                raise TimeoutError("llama-server did not load the model within 120 s")
            time.sleep(0.2)
        try:
            yield cmd.url
        except Exception:
            time.sleep(0.5)  # a server that crashed mid-generation: let the kernel reap it, report its signal
            if proc.poll() is not None:
                raise subprocess.CalledProcessError(proc.returncode, cmd.argv()) from None
            raise
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def _generate(engine: Engine) -> tuple[int, float]:
    request = GenerationRequest("self-check", "Once upon a time", SamplingParams(max_tokens=TOKENS, temperature=0))
    started = time.monotonic()
    tokens = 0
    for item in engine.generate(request, lambda: False):
        if isinstance(item, TokenChunk):
            tokens += item.tokens
        elif isinstance(item, Finish):
            tokens = item.completion_tokens
    if tokens == 0:
        raise RuntimeError("the engine generated no token")
    return tokens, time.monotonic() - started
