"""Following a sidecar someone else runs: it leaves and rejoins the registry as it stops and starts
answering, and flapping three times a minute is a crash loop."""

from __future__ import annotations

import threading
import time

from services.common.supervisor import Policy, State
from services.worker.sidecar import UpstreamWatch


class Switch:
    """A health check whose answer the test sets."""

    def __init__(self) -> None:
        self.up = True

    def __call__(self, url: str) -> bool:
        if not self.up:
            raise ConnectionError(f"{url} refused")
        return True


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_down_and_up_are_followed_and_flapping_is_a_crash_loop() -> None:
    switch = Switch()
    events: list[str] = []
    lock = threading.Lock()

    def record(what: str) -> None:
        with lock:
            events.append(what)

    watch = UpstreamWatch(
        "llama_server", "http://127.0.0.1:1/v1", on_up=lambda: record("up"), on_down=record,
        interval=0.01, policy=Policy(window=60, loop_after=3), check=switch,
    )  # fmt: skip
    assert watch.url == "http://127.0.0.1:1" and watch.state == State.SERVING
    watch.start()
    try:
        for n in range(1, 4):
            switch.up = False
            wait_for(lambda n=n: watch.restarts == n)
            expected = State.CRASH_LOOP if n == 3 else State.RESTARTING
            assert watch.state == expected and watch.last_exit == "stopped answering"
            switch.up = True
            wait_for(lambda: watch.state == State.SERVING)
    finally:
        watch.stop()
    assert events == ["stopped answering", "up"] * 3
    assert watch.state == State.STOPPED
