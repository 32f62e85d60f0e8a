"""A model swap gives its engine up once the jobs in flight end, without waiting up to DEQUEUE_TIMEOUT for idle
slots blocked in their dequeue; a job such a slot still takes goes back to the head of its queue as it was (for
the worker that loads the model next), and never runs on the engine being unloaded."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from services.api.pipeline.jobqueue import JobQueue
from services.common.jobs import Job
from services.worker.slots import DEQUEUE_TIMEOUT, Slots
from tests.support.queued_jobs import enqueue

pytestmark = pytest.mark.integration
MODEL = "release-test"


class Recorder:
    """Stands in for the JobRunner: which jobs reached the engine."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.hold = threading.Event()

    def run(self, job: Job, prelude: object = None) -> None:
        self.seen.append(job.request_id)
        self.hold.wait(10)


def wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_release_waits_for_the_job_in_flight_only_and_hands_back_what_a_closing_slot_takes(
    quiet_redis_client: redis.Redis,
) -> None:
    recorder = Recorder()
    slots = Slots(quiet_redis_client, MODEL, recorder, count=2, worker_id="w-release")  # type: ignore[arg-type]
    slots.start()
    enqueue(quiet_redis_client, "req-in-flight", MODEL)
    assert wait_for(lambda: slots.busy == 1, 10), "a slot took the first job; the other waits in its dequeue"

    released = threading.Event()
    threading.Thread(target=lambda: (slots.release(30), released.set()), daemon=True).start()
    time.sleep(0.5)
    assert not released.is_set(), "the job in flight holds the release"
    recorder.hold.set()
    assert released.wait(5)
    started = time.monotonic()

    # the idle slot is still blocked in its dequeue (it sees the stop only after it): what it takes now goes
    # back to the head of the queue as it was, for whoever loads the model next
    assert any(t.is_alive() for t in slots.threads), "an idle slot still waits in its dequeue"
    second = enqueue(quiet_redis_client, "req-after-release", MODEL)
    jobs = JobQueue(quiet_redis_client, stream_ttl=60)
    queue = jobs.queue(MODEL)
    for thread in slots.threads:
        thread.join(DEQUEUE_TIMEOUT + 3)
    assert not any(t.is_alive() for t in slots.threads), "idle slots end by themselves"
    state = jobs.state(second)
    assert state.status == "queued" and not state.in_intermediate, state
    assert queue.job_ids == ["req-after-release"]
    assert recorder.seen == ["req-in-flight"], "nothing ran on the engine after its release"
    print(f"released, then the slot ended {time.monotonic() - started:.1f} s later in the background")
