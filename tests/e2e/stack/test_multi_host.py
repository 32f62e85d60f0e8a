"""A second host joins a running stack: a worker in its own network namespace reaches the stack's Redis
(password-protected, bound to a veth address too) and serves requests that came in through nginx.

The namespace, the veth pair and the 10.231.x.0/30 addresses are the test's own making and are
removed afterwards. Where `ip netns` is not permitted the test is skipped, saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
import redis

from services.stack import redis_conf
from services.stack.procfile import Proc
from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack, spawn
from tests.support.procs import stop, wait_until, which

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Netns:
    name: str
    host_addr: str  # the stack's side of the veth pair
    ns_addr: str  # the namespace's side


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def unused_subnet() -> int:
    """A third octet for 10.231.X.0/30 that no interface here uses yet."""
    taken = ip("-4", "-o", "addr").stdout
    for offset in range(250):
        octet = (os.getpid() + offset) % 250 + 1
        if f"10.231.{octet}." not in taken:
            return octet
    raise RuntimeError("every 10.231.x.0/30 is in use")


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    if which("ip") is None:
        pytest.skip("multi-host test needs iproute2's `ip` (apt-get install iproute2)")
    tag = f"{os.getpid() % 100_000}"
    octet = unused_subnet()
    net = Netns(f"inference-test-{tag}", f"10.231.{octet}.1", f"10.231.{octet}.2")
    host_if, ns_if = f"vinfh{tag}", f"vinfn{tag}"
    added = ip("netns", "add", net.name)
    if added.returncode != 0:
        pytest.skip(f"`ip netns add` is not permitted here: {added.stderr.strip()}")
    try:
        steps = [
            ("link", "add", host_if, "type", "veth", "peer", "name", ns_if),
            ("link", "set", ns_if, "netns", net.name),
            ("addr", "add", f"{net.host_addr}/30", "dev", host_if),
            ("link", "set", host_if, "up"),
            ("netns", "exec", net.name, "ip", "addr", "add", f"{net.ns_addr}/30", "dev", ns_if),
            ("netns", "exec", net.name, "ip", "link", "set", ns_if, "up"),
            ("netns", "exec", net.name, "ip", "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = ip(*step)
            if result.returncode != 0:
                pytest.skip(f"cannot build the veth pair here (ip {' '.join(step)}): {result.stderr.strip()}")
        yield net
    finally:
        ip("netns", "del", net.name)  # takes the namespace's end of the pair, and so the pair, with it
        if ip("link", "show", host_if).returncode == 0:
            ip("link", "del", host_if)
        assert net.name not in ip("netns", "list").stdout


@pytest.fixture(scope="module")
def stack_and_remote_worker(netns: Netns, gemma_path: object) -> Iterator[tuple[NativeStack, str]]:
    """The stack with no worker of its own, Redis bound to loopback and the veth; the worker over there."""
    run_dir = RUN_DIR / f"multihost-{time.strftime('%H%M%S')}-{os.getpid()}"
    settings = e2e_settings(run_dir, redis_bind=f"127.0.0.1 {netns.host_addr}")
    with native_stack(settings, worker=False) as stack:
        remote_url = redis_conf.url_with_password(settings, settings.redis_password, host=netns.host_addr)
        argv = (
            sys.executable,
            "-m", "services.worker", "--engine", "llama_cpp", "--model", settings.default_model,
            "--slots", "1", "--metrics-port", "0", "--worker-id", "remote-netns-worker",
        )  # fmt: skip
        env = {**stack.stack.proc("api-1").env, "REDIS_URL": remote_url}
        in_netns = ("ip", "netns", "exec", netns.name)
        worker = spawn(Proc("remote-worker", argv, env), stack.log("remote-worker"), in_netns)
        try:
            wait_until(stack.model_served, 120, "the remote worker's model in /v1/models", worker)
            yield stack, remote_url
        finally:
            stop(worker)


def test_redis_on_the_veth_wants_the_password(netns: Netns, stack_and_remote_worker: tuple[NativeStack, str]) -> None:
    stack, _ = stack_and_remote_worker
    port = str(redis_conf.port(stack.settings))
    cli = which("redis-cli")
    assert cli is not None
    anonymous = subprocess.run(
        ["ip", "netns", "exec", netns.name, cli, "-h", netns.host_addr, "-p", port, "ping"],
        capture_output=True, text=True, check=False, env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr


def test_remote_worker_serves_requests_from_nginx(
    netns: Netns, stack_and_remote_worker: tuple[NativeStack, str]
) -> None:
    stack, _ = stack_and_remote_worker
    api = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="not-needed", max_retries=0, timeout=300)
    reply = api.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None and reply.usage and reply.usage.completion_tokens > 0
    # the only worker is the one in the namespace, and Redis sees it connected over the veth
    clients = redis.Redis.from_url(stack.redis_url).client_list()
    assert any(c["addr"].startswith(f"{netns.ns_addr}:") for c in clients), [c["addr"] for c in clients]
