"""The native stack's Redis persists (redis_conf.PERSISTENCE: AOF, fsync every second): killed with SIGKILL
and started again on the same files, it still holds a queued RQ job, a key's counters and its usage. With
`appendonly no` (the config before issue 29) the same restart lost all three."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from services.common import keys
from services.common.ports import free_port
from services.common.settings import Settings
from services.stack import redis_conf
from services.stack.layout import Layout
from tests.conftest import RUN_DIR
from tests.support.procs import stop, wait_until, which

pytestmark = pytest.mark.integration


def start(conf: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        argv = [str(which("redis-server")), str(conf)]
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.parametrize("persistent", [True, False])
def test_queue_counters_and_usage_survive_a_kill(persistent: bool) -> None:
    port, secret = free_port(), "persist-" + os.urandom(4).hex()
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", run_dir=RUN_DIR / f"persist-{port}")
    layout = Layout(settings.run_dir, settings.run_dir / "logs")
    redis_conf.write_conf(settings, layout, secret)
    if not persistent:  # the control: the same file as before issue 29
        text = layout.redis_conf.read_text().replace("appendonly yes", "appendonly no")
        layout.redis_conf.write_text(text)
    log = settings.run_dir / "redis.log"
    client = redis.Redis(port=port, password=secret, socket_timeout=2)
    proc = start(layout.redis_conf, log)
    try:
        wait_until(client.ping, 20, "redis-server", proc)
        queue = Queue(keys.queue_name("gemma-3-270m"), connection=client, serializer=JSONSerializer)
        job = queue.enqueue("services.worker.job.run", {"v": 1}, job_id="persisted-job")
        client.incrby(f"{keys.limits_prefix()}/key-a/tokens", 1234)
        client.hset(keys.usage("2026-01-01"), mapping={"key-a|requests": 3, "key-a|completion_tokens": 99})
        time.sleep(1.5)  # appendfsync everysec: at most the last second is lost
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc = start(layout.redis_conf, log)
        wait_until(client.ping, 20, "redis-server again", proc)
        kept = (
            queue.key in [k.decode() for k in client.keys("rq:queue:*")] and job.id in queue.job_ids,
            client.get(f"{keys.limits_prefix()}/key-a/tokens") == b"1234",
            client.hget(keys.usage("2026-01-01"), "key-a|completion_tokens") == b"99",
        )
        assert kept == ((True, True, True) if persistent else (False, False, False))
    finally:
        stop(proc)
