"""kill -9 of each kind of process of the native stack under load, as an outsider sees it through nginx.

For each kill, 8 clients (half streamed chats, half plain completions) are in flight; what each received
is recorded as an answer, a clean error (an OpenAI envelope with its status, or an error event in the
stream), or a protocol error (the connection closed before the response was complete: an unterminated
chunked body, no response at all). None may hang, and none may be a stream cut short that a client could
take for a complete answer: a body that ends cleanly without `data: [DONE]`. The killed process is started
again (natively the worker restarts itself and its llama-server; the rest here by the test, as a supervisor
would) and the service must answer again. The table of outcomes is printed at the end (`-s` shows it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.attack.conftest import AttackStack
from tests.support.native_stack import NativeStack
from tests.support.procs import stat_fields, wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"
CLIENTS = 8
MAX_TOKENS = 32
ENDS_WITHIN_S = 60.0
"""Every in-flight client hears how its request ended within this of the kill (REQUEST_TIMEOUT is 45 s here)."""
BACK_WITHIN_S = 90.0
STREAMS = 10
COUNTING = "1, 2, 3, 4, 5,"
"""Gemma 270M keeps counting without an end-of-sequence, so each request runs its full max_tokens."""

STACK = {
    "llama_server_parallel": CLIENTS,  # every client generates at once: all are in flight at the kill
    "request_timeout": 45,
    "sse_keepalive": 2,
    "lease_ttl": 3,
}
"""Read by tests/e2e/attack/conftest.py's `attack` fixture: one keyed stack for this module."""
TABLE: dict[str, Counter[str]] = {}


@pytest.fixture(scope="module")
def stack(attack: AttackStack) -> Iterator[AttackStack]:
    """The module's stack; the clients use its admin key (no limits of its own to trip)."""
    yield attack
    print_table()


def client(attack: AttackStack, timeout: float) -> httpx.Client:
    return httpx.Client(base_url=attack.url, headers=attack.auth(attack.admin), timeout=timeout)


# -- what a client received -----------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    """answer, error (a status with an OpenAI envelope), error event, protocol error; or the defects:
    truncated (a clean end without [DONE] or without a finish_reason), bad body, hang."""
    detail: str = ""
    ended_at: float = 0.0
    said: str = ""
    """What the client library said (its exception's message), for the report."""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.detail}".strip()


DEFECTS = ("truncated", "bad body", "hang")


def envelope_code(resp: httpx.Response) -> str | None:
    try:
        error = json.loads(resp.read())["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error.get("code") if isinstance(error, dict) and error.get("message") else None


def refused(resp: httpx.Response) -> Outcome:
    """An answer other than 200: clean when its body is the OpenAI envelope."""
    code = envelope_code(resp)
    return Outcome("error", f"{resp.status_code} {code}") if code else Outcome("bad body", str(resp.status_code))


def streamed(http: httpx.Client, first: threading.Event) -> Outcome:
    """A streamed chat read line by line, as an SSE client reads it."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": COUNTING}], "stream": True}
    body |= {"max_tokens": MAX_TOKENS, "temperature": 0}
    finish, done, error = None, False, None
    try:
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                first.set()
                return refused(resp)
            for line in resp.iter_lines():
                first.set()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"].get("code")
                for choice in chunk.get("choices", []):
                    finish = choice.get("finish_reason") or finish
    except httpx.TransportError as exc:
        return Outcome("protocol error", type(exc).__name__, said=str(exc))
    finally:
        first.set()
    if error is not None:
        return Outcome("error event", str(error))
    if done and finish:
        return Outcome("answer")
    return Outcome("truncated", f"done={done} finish={finish}")


def plain(http: httpx.Client, first: threading.Event) -> Outcome:
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": MAX_TOKENS, "temperature": 0}
    first.set()
    try:
        resp = http.post("/v1/completions", json=body)
    except httpx.TransportError as exc:
        return Outcome("protocol error", type(exc).__name__, said=str(exc))
    if resp.status_code == 200:
        try:
            (choice,) = resp.json()["choices"]
        except (ValueError, KeyError) as exc:
            return Outcome("bad body", f"200 {exc!r}")
        return Outcome("answer") if choice.get("finish_reason") else Outcome("truncated", "no finish_reason")
    return refused(resp)


class Load:
    """CLIENTS requests through nginx, half streamed; `started` once each stream has its 200 and first line."""

    def __init__(self, attack: AttackStack) -> None:
        self.http = client(attack, ENDS_WITHIN_S + 30)
        self.pool = ThreadPoolExecutor(CLIENTS)
        self.firsts = [threading.Event() for _ in range(CLIENTS)]
        self.futures = [
            self.pool.submit(self._timed, streamed if i % 2 == 0 else plain, self.firsts[i]) for i in range(CLIENTS)
        ]

    def _timed(self, fn: Callable[..., Outcome], first: threading.Event) -> Outcome:
        outcome = fn(self.http, first)
        outcome.ended_at = time.monotonic()
        return outcome

    def wait_started(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for event in self.firsts:
            assert event.wait(max(0.0, deadline - time.monotonic())), "a client never started"

    def outcomes(self, killed_at: float) -> list[Outcome]:
        out = []
        for future in self.futures:
            try:
                outcome = future.result(timeout=max(0.1, killed_at + ENDS_WITHIN_S - time.monotonic()))
            except TimeoutError:
                outcome = Outcome("hang", f"> {ENDS_WITHIN_S:.0f} s")
            out.append(outcome)
        self.http.close()  # a hung client's connection goes with it
        self.pool.shutdown(wait=False, cancel_futures=True)
        return out


def answers(attack: AttackStack) -> bool:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with client(attack, 30) as http:
        return http.post("/v1/chat/completions", json=body).status_code == 200


def under_load(attack: AttackStack, name: str, kill: Callable[[], None], restore: Callable[[], None]) -> list[Outcome]:
    """Kill while CLIENTS requests are in flight; record, restore, and check that the service answers."""
    wait_until(lambda: answers(attack), BACK_WITHIN_S, "the service before the kill")
    load = Load(attack)
    load.wait_started()
    time.sleep(0.5)  # every plain request is queued or generating by now
    killed_at = time.monotonic()
    kill()
    outcomes = load.outcomes(killed_at)
    restore()
    wait_until(lambda: answers(attack), BACK_WITHIN_S, f"the service after killing {name}")
    back = time.monotonic() - killed_at
    TABLE[name] = Counter(o.label for o in outcomes) + Counter({f"back in {back:.0f} s": 1})
    latest = max(o.ended_at for o in outcomes) - killed_at
    print(f"kill -9 {name}: {[o.label for o in outcomes]}; last client ended {latest:.1f} s after; back {back:.1f} s")
    assert not [o for o in outcomes if o.kind in DEFECTS], outcomes
    return outcomes


def print_table() -> None:
    if not TABLE:
        return
    kinds = sorted({label for row in TABLE.values() for label in row if not label.startswith("back in")})
    print(f"\nkill -9 under load: what each of {CLIENTS} in-flight clients received (through nginx)")
    for name, row in TABLE.items():
        cells = ", ".join(f"{row[k]} {k}" for k in kinds if row[k])
        back = next(label for label in row if label.startswith("back in"))
        print(f"  {name:<22} {cells}; service {back}")


# -- processes ------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(stat_fields(entry)[1]) == pid:
                    found.append(int(entry.name))
    return found


def worker_record(attack: AttackStack) -> dict:
    with client(attack, 5) as http:
        (worker,) = http.get("/v1/system/status").json()["workers"]
    return worker


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    try:
        return stat_fields(Path(f"/proc/{pid}"))[0] == "Z"
    except OSError:
        return True


def restart(stack: NativeStack, name: str) -> Callable[[], None]:
    """Start `name` again once every process of its old group is gone (a master's orphaned workers finish
    their requests and leave), so nothing of ours is left running and the port is free."""

    def again() -> None:
        popen = stack.procs.pop(name)
        popen.wait(10)
        group = popen.pid
        leftovers = lambda: [p for p in all_pids() if pgid(p) == group and not gone(p)]  # noqa: E731
        wait_until(lambda: not leftovers(), ENDS_WITHIN_S, f"the rest of {name}'s processes gone")
        stack.start(name)

    return again


def all_pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def pgid(pid: int) -> int | None:
    try:
        return int(stat_fields(Path(f"/proc/{pid}"))[2])
    except (OSError, IndexError):
        return None


def nothing() -> None:
    """The process restarts itself (the worker under services.stack.respawn, llama-server under its worker)."""


# -- the tests ------------------------------------------------------------------------------------------


def test_an_api_worker_process_killed_mid_stream_never_looks_complete(stack: AttackStack) -> None:
    """STREAMS streamed chats through nginx, half read by httpx line by line and half by the openai SDK; every
    gunicorn worker process of both replicas is killed once each stream has its first line. nginx must not
    end a stream its replica left unfinished with the chunked encoding's last chunk: each stream either
    completed ([DONE] and a finish_reason) or its client saw the body break off."""
    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.admin, max_retries=0, timeout=ENDS_WITHIN_S)
    http = client(stack, ENDS_WITHIN_S)
    firsts = [threading.Event() for _ in range(STREAMS)]

    def by_sdk(first: threading.Event) -> Outcome:
        finish = None
        try:
            stream = sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": COUNTING}],
                max_tokens=MAX_TOKENS * 3,
                temperature=0,
                stream=True,
            )
            for chunk in stream:
                first.set()
                finish = chunk.choices[0].finish_reason if chunk.choices else finish
        except Exception as exc:  # what the SDK raises is what this test records
            return Outcome(
                "protocol error", f"{type(exc).__module__}.{type(exc).__name__}", said=f"{exc!r} from {exc.__cause__!r}"
            )
        finally:
            first.set()
        return Outcome("answer") if finish else Outcome("truncated", "the SDK's iteration ended without finish_reason")

    with ThreadPoolExecutor(STREAMS) as pool:
        futures = [pool.submit(by_sdk if i % 2 else streamed, *(() if i % 2 else (http,)), firsts[i])
                   for i in range(STREAMS)]  # fmt: skip
        for event in firsts:
            assert event.wait(60), "a stream never started"
        victims = [pid for n in (1, 2) for pid in children(stack.stack.procs[f"api-{n}"].pid)]
        assert len(victims) == 2 * stack.stack.settings.workers, victims
        killed_at = time.monotonic()
        kill_api_workers(stack)
        outcomes = [f.result(timeout=ENDS_WITHIN_S) for f in futures]
    http.close()
    ended = time.monotonic() - killed_at
    labels = [o.label for o in outcomes]
    print(f"\n{STREAMS} streams, every API worker process killed, all ended within {ended:.1f} s:")
    for i, o in enumerate(outcomes):
        print(f"  {'openai SDK' if i % 2 else 'httpx'}: {o.label} {o.said}")
    assert not [o for o in outcomes if o.kind in DEFECTS], labels
    assert sum(o.kind == "protocol error" for o in outcomes) >= STREAMS // 2, f"the kill cut too few: {labels}"
    raw = [o for i, o in enumerate(outcomes) if i % 2 == 0 and o.kind == "protocol error"]
    assert raw and all(o.detail == "RemoteProtocolError" for o in raw), labels
    log = stack.stack.log("nginx")  # its error log goes to stderr
    said = Counter(
        re.sub(r"^.*?\*\d+ ", "", ln).split(", client")[0] for ln in log.read_text().splitlines() if "*" in ln
    )
    print("nginx's error log:", dict(said))
    wait_until(lambda: answers(stack), BACK_WITHIN_S, "the replicas' masters start new workers")


def kill_api_workers(stack: AttackStack) -> None:
    """kill -9 every gunicorn worker process of both replicas (their masters start new ones)."""
    for n in (1, 2):
        for pid in children(stack.stack.procs[f"api-{n}"].pid):
            kill_pid(pid)


def test_an_http10_client_never_gets_a_cut_stream_that_ends_cleanly(stack: AttackStack) -> None:
    """HTTP/1.0 has no chunked encoding: nginx can end a body only by closing the connection, so a stream
    whose replica died would end exactly as a complete one does (curl exits 0; only the missing [DONE] tells).
    Refused up front (426), or cut visibly; never a clean end without [DONE]."""
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": COUNTING}], "max_tokens": MAX_TOKENS * 3}
        | {"temperature": 0, "stream": True}
    ).encode()
    head = f"POST /v1/chat/completions HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {stack.admin}\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=ENDS_WITHIN_S) as sock:
        sock.sendall(head.encode() + body)
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        headers = {}
        while (line := reader.readline().decode()) not in ("\r\n", ""):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 200:
            while not reader.readline().startswith(b"data: "):
                pass
            kill_api_workers(stack)
            try:
                outcome = "answer" if b"data: [DONE]" in reader.read() else "truncated (a clean end without [DONE])"
            except OSError as exc:
                outcome = f"protocol error {type(exc).__name__}"
        else:
            error = json.loads(reader.read())["error"]
            outcome = f"error {status} {error['code']}"
    print(f"\nan HTTP/1.0 streamed chat: {outcome}")
    assert not outcome.startswith("truncated"), outcome
    assert outcome == "error 426 http_version_not_supported" and headers.get("upgrade") == "HTTP/1.1", outcome
    wait_until(lambda: answers(stack), BACK_WITHIN_S, "the service after the test")


def test_kill_an_api_gunicorn_master(stack: AttackStack) -> None:
    native = stack.stack
    under_load(stack, "api-1 gunicorn master", lambda: kill_pid(native.procs["api-1"].pid), restart(native, "api-1"))


def test_kill_an_api_worker_process(stack: AttackStack) -> None:
    def kill() -> None:
        for pid in children(stack.stack.procs["api-1"].pid):
            kill_pid(pid)

    under_load(stack, "api-1 worker processes", kill, nothing)


def test_kill_the_inference_worker(stack: AttackStack) -> None:
    pid = worker_record(stack)["pid"]
    under_load(stack, "inference worker", lambda: kill_pid(pid), nothing)
    assert worker_record(stack)["pid"] != pid
    # its new llama-server is on LLAMA_SERVER_PORT again, where Prometheus scrapes it: the old one's TIME_WAIT
    # sockets there must not move it to another port (llama-server itself binds with SO_REUSEADDR)
    port = stack.stack.settings.llama_server_port
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


def test_kill_llama_server(stack: AttackStack) -> None:
    pid = worker_record(stack)["engine_pid"]
    under_load(stack, "llama-server", lambda: kill_pid(pid), nothing)
    assert worker_record(stack)["engine_pid"] != pid


def test_kill_redis(stack: AttackStack) -> None:
    native = stack.stack
    under_load(stack, "redis", lambda: kill_pid(native.procs["redis"].pid), restart(native, "redis"))


def test_kill_nginx(stack: AttackStack) -> None:
    native = stack.stack
    under_load(stack, "nginx", lambda: os.killpg(native.procs["nginx"].pid, signal.SIGKILL), restart(native, "nginx"))


def test_kill_prometheus(stack: AttackStack) -> None:
    native = stack.stack
    kill = lambda: kill_pid(native.procs["prometheus"].pid)  # noqa: E731
    outcomes = under_load(stack, "prometheus", kill, restart(native, "prometheus"))
    assert all(o.kind == "answer" for o in outcomes), "clients never depend on Prometheus"
    wait_until(lambda: httpx.get(f"{native.stack.prometheus_url}/-/ready", timeout=2).status_code == 200, 30, "up")
