"""A real llama-server killed mid-stream (SIGKILL, SIGSEGV) through the whole native stack, and a real
worker killed by SIGSEGV: the death is said in one log line with its signal, the model leaves
/v1/models at once, its clients get an error within seconds, and the process is back with backoff.
A third death within the minute shows as a crash loop in /v1/system/status.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
ERROR_WITHIN_S = 10.0
"""Clients of a dead engine hear of it within this (a keep-alive tick is 2 s here), never at the timeout."""


@pytest.fixture(scope="module")
def stack(gemma_path: object) -> Iterator[NativeStack]:
    settings = e2e_settings(RUN_DIR / f"crash-{time.strftime('%H%M%S')}-{os.getpid()}", sse_keepalive=2)
    with native_stack(settings, scrape_interval="5s") as running:
        yield running


def worker_record(stack: NativeStack) -> dict:
    (worker,) = httpx.get(f"{stack.url}/v1/system/status", timeout=5).json()["workers"]
    return worker


def model_listed(stack: NativeStack) -> bool:
    return any(m["id"] == MODEL for m in httpx.get(f"{stack.url}/v1/models", timeout=5).json().get("data", []))


class Streams:
    """`n` long streamed completions; each records how long after `killed_at` its stream ended, and how."""

    def __init__(self, stack: NativeStack, n: int) -> None:
        self.api = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=120)
        self.first_token = threading.Barrier(n + 1, timeout=120)
        self.killed_at = 0.0
        self.ends: list[tuple[float, str]] = []
        self.threads = [threading.Thread(target=self._one) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _one(self) -> None:
        waited = False
        outcome = "finished"
        try:
            stream = self.api.completions.create(
                model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=400, temperature=0, stream=True
            )
            for _chunk in stream:
                if not waited:
                    waited = True
                    self.first_token.wait()
        except (openai.APIError, httpx.HTTPError) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        if not waited:
            self.first_token.abort()
        self.ends.append((time.monotonic() - self.killed_at, outcome))

    def join(self) -> list[tuple[float, str]]:
        for t in self.threads:
            t.join(120)
        return self.ends


def kill_mid_stream(stack: NativeStack, pid: int, sig: signal.Signals) -> tuple[list[tuple[float, str]], bool]:
    """Kill `pid` while 3 streams generate; returns how each ended and whether /v1/models dropped the model."""
    streams = Streams(stack, 3)
    streams.first_token.wait()
    streams.killed_at = time.monotonic()
    os.kill(pid, sig)
    dropped = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not dropped:
        dropped = not model_listed(stack)
        time.sleep(0.05)
    return streams.join(), dropped


def back_in_service(stack: NativeStack, since: float) -> float:
    wait_until(lambda: model_listed(stack), 90, "the model back in /v1/models")
    api = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=60)
    reply = api.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    return time.monotonic() - since


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_llama_server_killed_mid_stream(stack: NativeStack, sig: signal.Signals) -> None:
    before = worker_record(stack)
    assert before["state"] == "serving" and before["engine_pid"]
    ends, dropped = kill_mid_stream(stack, before["engine_pid"], sig)
    assert len(ends) == 3
    assert all(outcome != "finished" for _, outcome in ends), ends  # 400 tokens cannot have finished
    assert max(t for t, _ in ends) < ERROR_WITHIN_S, ends
    assert dropped, "the model stayed in /v1/models while its engine was dead"
    served_again = back_in_service(stack, time.monotonic() - max(t for t, _ in ends))
    after = worker_record(stack)
    assert after["restarts"] == before["restarts"] + 1 and after["engine_pid"] != before["engine_pid"]
    assert after["last_exit"] == f"killed by {sig.name}" + (
        " (segmentation fault)"
        if sig == signal.SIGSEGV
        else " (killed; the kernel's OOM killer does this when memory runs out)"
    )
    line = [ln for ln in stack.log("worker").read_text().splitlines() if f"killed by {sig.name}" in ln]
    assert line and f"pid {before['engine_pid']}" in line[-1], line
    errored = max(t for t, _ in ends)
    print(f"\n{sig.name}: clients errored after {errored:.2f} s; served again after {served_again:.1f} s")


def test_repeated_crashes_show_as_a_crash_loop(stack: NativeStack) -> None:
    seen = set()
    for _ in range(3):
        wait_until(lambda: worker_record(stack)["state"] == "serving", 90, "llama-server serving again")
        os.kill(worker_record(stack)["engine_pid"], signal.SIGSEGV)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen.add(worker_record(stack)["state"])
            if seen & {"restarting", "crash_loop"}:
                break
            time.sleep(0.05)
    deadline = time.monotonic() + 5
    while "crash_loop" not in seen and time.monotonic() < deadline:
        seen.add(worker_record(stack)["state"])
        time.sleep(0.05)
    assert "crash_loop" in seen, seen
    assert "crash loop" in stack.log("worker").read_text()
    back_in_service(stack, time.monotonic())


def test_worker_killed_by_sigsegv_is_restarted(stack: NativeStack) -> None:
    """An in-process engine's crash takes the worker down: the respawn wrapper says so, removes the dead
    worker's record at once and starts it again; the new worker says how its predecessor died."""
    before = worker_record(stack)
    ends, dropped = kill_mid_stream(stack, before["pid"], signal.SIGSEGV)
    assert all(outcome != "finished" for _, outcome in ends), ends
    assert max(t for t, _ in ends) < ERROR_WITHIN_S, ends
    assert dropped
    back_in_service(stack, time.monotonic())
    after = worker_record(stack)
    assert after["pid"] != before["pid"] and after["last_exit"] == "killed by SIGSEGV (segmentation fault)"
    assert after["restarts"] >= 1
    assert f"worker (pid {before['pid']}) killed by SIGSEGV" in stack.log("worker").read_text()
