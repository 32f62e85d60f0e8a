"""The function RQ calls (by dotted path, see common/jobs.JOB_FUNCTION) inside a worker slot.

RQ resolves jobs by name, not by object, so the slot thread binds its runner here before working;
the binding is per thread, like RQ's own `get_current_job()`.
"""

from __future__ import annotations

import logging
import threading

from services.common import logs
from services.common.jobs import Job
from services.worker.append import Prelude
from services.worker.runner import JobRunner

log = logging.getLogger(__name__)
_slot = threading.local()


def bind(runner: JobRunner | object) -> None:
    _slot.runner = runner


def run(payload: dict, prelude: Prelude | None = None) -> None:
    """`prelude`: the slot's own start bookkeeping, written in the round trip of the job's `started`."""
    runner: JobRunner | None = getattr(_slot, "runner", None)
    if runner is None:
        raise RuntimeError("services.worker.job.run called outside a worker slot")
    job = Job.from_wire(payload)
    with logs.bound(job.client_request_id or job.request_id):  # older APIs send no X-Request-ID
        log.info("job %s: model %s, attempt %d", job.request_id, job.model, job.attempt)  # RQ's own line is off
        runner.run(job, prelude=prelude)
