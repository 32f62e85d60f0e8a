"""A worker that dies between dequeue and start: `python -m tests.support.doomed_worker REDIS_URL MODEL ID`.

It registers as serving MODEL (so the API routes to it), takes one job with RQ's own dequeue, lets RQ mark
it started under its name, as a real slot does, and then SIGKILLs itself before our code runs the job:
the moment a real worker could die at, made exact.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from services.common import keys
from services.common.redis_client import connect
from services.common.registry import Registry, WorkerRecord


def main(url: str, model: str, worker_id: str) -> None:
    client = connect(url, longest_block=30)
    Registry(client, ttl=3).beat(
        WorkerRecord(id=worker_id, host=socket.gethostname(), pid=os.getpid(), engine="doomed", device="cpu",
                     models=(model,), slots=1, busy=0, started_at=time.time())
    )  # fmt: skip
    queue = Queue(keys.queue_name(model), connection=client, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=client, serializer=JSONSerializer, name=f"{worker_id}.{model}.0.1")
    worker.register_birth()
    print("waiting for a job", flush=True)
    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=30)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    print(f"took {job.id}; dying", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(*sys.argv[1:4])
