"""Redis fails over under load, for real: Debian's redis-server (one master, one replica) and redis-sentinel (three)
on 127.0.0.1, configured as services/stack/redis_conf.py writes them (AOF, Sentinel's timing), the native stack
on top finding the master through the Sentinels (REDIS_SENTINELS), a steady load of streamed and non-streamed
chat completions through nginx, and the master killed by PID in the middle of it.

Every request must end in an answer or a clean, retryable error (a 503 envelope, or a streamed error event
before [DONE]): none hangs, no stream ends without [DONE], none is cut short and presented as complete. Requests
still queued when the master died are served after the failover. The 503 window (the first refusal after the
kill to the last) is printed and held to WINDOW_S. Then the old master comes back and joins as a replica of the
new one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis

from services.common import keys
from services.common.ports import free_port
from services.common.settings import Settings
from services.keys import store
from services.stack import redis_conf
from services.stack.layout import Layout
from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack
from tests.support.procs import stop, wait_until, which

pytestmark = pytest.mark.e2e

MASTER_NAME = "inference"
KEY_NAME = "failover-user"
WINDOW_S = 10.0
"""The longest the service may answer 503 after the master dies (Sentinel's timing: redis_conf.SENTINEL_TIMING)."""
CLIENTS = 6
RETRY_AFTER_S = 0.25
HANG_S = 90.0
"""A request still unanswered after this long hangs (a healthy one here takes a few seconds)."""


@dataclass
class Node:
    name: str
    port: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL by PID: the machine or the process gone, nothing flushed, no goodbye to the replicas."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class Outcome:
    streamed: bool
    started: float
    ended: float
    kind: str  # "answer", "retryable" (503 envelope or streamed error event), or what went wrong
    detail: str = ""


@dataclass
class Load:
    url: str
    key: str
    stop: threading.Event = field(default_factory=threading.Event)
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, since: float | None = None) -> int:
        with self.lock:
            return sum(1 for o in self.outcomes if o.kind == kind and (since is None or o.started >= since))

    def run(self, streamed: bool) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=httpx.Timeout(HANG_S, connect=5)) as client:
            while not self.stop.is_set():
                outcome = one_request(client, streamed)
                with self.lock:
                    self.outcomes.append(outcome)
                if outcome.kind != "answer":
                    time.sleep(RETRY_AFTER_S)  # as a client would retry: a bounded load, not a spin


def one_request(client: httpx.Client, streamed: bool) -> Outcome:
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Count: one, two,"}], "max_tokens": 24}
    started = time.monotonic()
    try:
        if not streamed:
            resp = client.post("/v1/chat/completions", json=body)
            return Outcome(False, started, time.monotonic(), *judge_json(resp))
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
            if resp.status_code != 200:
                resp.read()
                return Outcome(True, started, time.monotonic(), *judge_json(resp))
            return Outcome(True, started, time.monotonic(), *judge_stream(resp.iter_lines()))
    except httpx.TimeoutException as exc:
        return Outcome(streamed, started, time.monotonic(), "hang", repr(exc))
    except httpx.HTTPError as exc:
        return Outcome(streamed, started, time.monotonic(), "broken connection", repr(exc))


def judge_json(resp: httpx.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return "not JSON", f"{resp.status_code} {resp.text[:200]}"
    if resp.status_code == 200:
        done = body["choices"][0].get("finish_reason") in ("stop", "length")
        return ("answer", "") if done else ("unfinished answer", json.dumps(body)[:200])
    error = body.get("error") or {}
    retryable = resp.status_code == 503 and bool(error.get("message"))
    return ("retryable" if retryable else "error"), f"{resp.status_code} {error.get('code')} {error.get('message')}"


def judge_stream(lines: Iterator[str]) -> tuple[str, str]:
    """An answer: chunks, a finish_reason, then [DONE]. Retryable: an error event, then [DONE]."""
    finished, error = False, None
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            if error is not None:
                return "retryable", error
            return ("answer", "") if finished else ("truncated stream presented as complete", "")
        event = json.loads(data)
        if "error" in event:
            error = f"{event['error'].get('code')} {event['error'].get('message')}"
        elif any(c.get("finish_reason") for c in event.get("choices", [])):
            finished = True
    return "stream ended without [DONE]", error or ""


def usage_days() -> set[str]:
    """Today in UTC, and yesterday should the test run across midnight."""
    now = datetime.now(UTC)
    return {now.date().isoformat(), (now - timedelta(hours=1)).date().isoformat()}


def knows_a_good_replica(sentinel: redis.Redis) -> bool:
    """The Sentinel lists the replica, up and linked to its master: one it would promote."""
    replicas = sentinel.sentinel_slaves(MASTER_NAME)
    return any(
        r["is_slave"] and not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
        and r.get("master-link-status") == "ok"
        for r in replicas
    )  # fmt: skip


def node_conf(run_dir: Path, port: int, secret: str, replica_of: int | None) -> Path:
    """redis.conf as the native stack writes it (persistence on), on its own port and directory."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", run_dir=run_dir / f"redis-{port}")
    layout = Layout(settings.run_dir, settings.run_dir / "logs")
    layout.redis_dir.mkdir(parents=True, exist_ok=True)
    text = redis_conf.config(settings, layout, secret)
    if replica_of is not None:
        text += f"replicaof 127.0.0.1 {replica_of}\n"
    layout.redis_conf.write_text(text)
    return layout.redis_conf


@pytest.fixture(scope="module")
def redis_set() -> Iterator[dict[str, object]]:
    """A master, its replica and three Sentinels, started and healthy; all stopped by PID afterwards."""
    server, sentinel = which("redis-server"), which("redis-sentinel")
    if server is None or sentinel is None:
        pytest.fail("redis-server and redis-sentinel are needed: run `make system-test` (Debian: redis-sentinel)")
    run_dir = RUN_DIR / f"failover-{time.strftime('%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    secret = "failover-" + os.urandom(6).hex()
    master_port, replica_port = free_port(), free_port()
    nodes = {
        "master": Node("master", master_port, [server, str(node_conf(run_dir, master_port, secret, None))],
                       run_dir / "master.log"),
        "replica": Node("replica", replica_port, [server, str(node_conf(run_dir, replica_port, secret, master_port))],
                        run_dir / "replica.log"),
    }  # fmt: skip
    for i in range(3):
        port = free_port()
        conf = run_dir / f"sentinel-{i}.conf"
        conf.write_text(
            redis_conf.sentinel_config(
                port=port, master=("127.0.0.1", master_port), secret=secret, master_name=MASTER_NAME
            )
        )
        nodes[f"sentinel-{i}"] = Node(f"sentinel-{i}", port, [sentinel, str(conf)], run_dir / f"sentinel-{i}.log")
    try:
        for node in nodes.values():
            node.start()
        master = redis.Redis(port=master_port, password=secret)
        wait_until(lambda: master.info("replication")["connected_slaves"] == 1, 30, "the replica to sync")
        for i in range(3):
            s = redis.Redis(port=nodes[f"sentinel-{i}"].port, password=secret)
            wait_until(lambda s=s: s.sentinel_master(MASTER_NAME)["num-other-sentinels"] == 2, 30, "sentinels")
            # A Sentinel learns of replicas from the master's INFO, every 10 s: killed before that, the master has
            # no replica it knows of and no failover happens (-failover-abort-no-good-slave, seen on a busy box).
            wait_until(lambda s=s: knows_a_good_replica(s), 60, "every sentinel to know the replica")
        yield {"nodes": nodes, "secret": secret, "run_dir": run_dir}
    finally:
        for node in nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                stop(node.proc)


@pytest.fixture(scope="module")
def stack(redis_set: dict[str, object], gemma_path: object) -> Iterator[tuple[NativeStack, str]]:
    nodes: dict[str, Node] = redis_set["nodes"]  # type: ignore[assignment]
    sentinels = ",".join(f"127.0.0.1:{n.port}" for name, n in nodes.items() if name.startswith("sentinel"))
    run_dir: Path = redis_set["run_dir"] / "stack"  # type: ignore[operator]
    run_dir.mkdir(parents=True)
    key = store.create(run_dir / "api-keys.json", KEY_NAME)
    settings = e2e_settings(
        run_dir,
        api_keys_file=run_dir / "api-keys.json",
        # the host here is not used: every client asks the Sentinels for the master
        redis_url=f"redis://:{redis_set['secret']}@127.0.0.1:{nodes['master'].port}/0",
        redis_sentinels=sentinels,
        redis_master_name=MASTER_NAME,
        redis_password=redis_set["secret"],
        llama_server_parallel=2,
        request_timeout=120,
    )
    with native_stack(settings) as running:
        assert "redis" not in running.procs, "the stack must use the Sentinels' master, not start its own"
        yield running, key


def test_master_killed_under_load(stack: tuple[NativeStack, str], redis_set: dict[str, object]) -> None:
    running, key = stack
    nodes: dict[str, Node] = redis_set["nodes"]  # type: ignore[assignment]
    secret = str(redis_set["secret"])
    sentinel = redis.Redis(port=nodes["sentinel-0"].port, password=secret)
    load = Load(running.url, key)
    threads = [threading.Thread(target=load.run, args=(i % 2 == 0,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    # steady state: every slot busy, some requests queued behind them, a few answered
    wait_until(lambda: load.count("answer") >= CLIENTS, HANG_S, "answers before the kill")
    before = load.count("answer")
    killed_at = time.monotonic()
    nodes["master"].kill()
    wait_until(
        lambda: sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[1] == nodes["replica"].port,
        30,
        "the Sentinels to promote the replica",
    )
    promoted_s = time.monotonic() - killed_at
    # the load goes on against the new master until requests begun after the kill are answered
    wait_until(lambda: load.count("answer", since=killed_at) >= CLIENTS, HANG_S, "answers after the failover")
    load.stop.set()
    for t in threads:
        t.join(HANG_S + 10)
    assert not any(t.is_alive() for t in threads), "a client thread hangs"

    after_kill = [o for o in load.outcomes if o.ended >= killed_at]
    refused = [o for o in after_kill if o.kind == "retryable"]
    bad = [o for o in load.outcomes if o.kind not in ("answer", "retryable")]
    window = (max(o.ended for o in refused) - min(o.ended for o in refused)) if refused else 0.0
    served_after = [o for o in after_kill if o.kind == "answer" and o.started >= killed_at]
    queued_then_served = [o for o in after_kill if o.kind == "answer" and o.started < killed_at]
    print(
        f"\nfailover: replica promoted {promoted_s:.1f} s after the kill; 503 window {window:.1f} s "
        f"({len(refused)} retryable errors); {len(load.outcomes)} requests, {before} answered before the kill, "
        f"{len(served_after)} begun and answered after it, {len(queued_then_served)} in flight at the kill and "
        f"answered; not clean: {len(bad)}"
    )
    for o in bad[:10]:
        print(f"  {'stream' if o.streamed else 'json'} {o.kind}: {o.detail}")
    assert not bad, f"{len(bad)} requests ended neither in an answer nor in a clean retryable error"
    assert served_after, "nothing was served after the failover"
    assert queued_then_served, "requests waiting in the queue at the kill must be served after the failover"
    assert window <= WINDOW_S, f"503 for {window:.1f} s"

    # the key's usage, on the new master, counts every answer given (and nothing else)
    master = redis.Redis(port=nodes["replica"].port, password=secret)
    counted = sum(int(master.hget(keys.usage(day), f"{KEY_NAME}|requests") or 0) for day in usage_days())
    answers = sum(1 for o in load.outcomes if o.kind == "answer")
    print(f"usage after the failover: {counted} requests counted, {answers} answered")
    assert counted == answers

    # the old master comes back, as a replica of the new one (Sentinel rewrites its role)
    nodes["master"].start()
    old = redis.Redis(port=nodes["master"].port, password=secret)

    def replica_of_new() -> bool:
        try:
            info = old.info("replication")
        except redis.ConnectionError:
            return False
        return info["role"] == "slave" and int(info["master_port"]) == nodes["replica"].port

    wait_until(replica_of_new, 60, "the old master to rejoin as a replica")
    print(f"old master back as a replica of :{nodes['replica'].port}")
