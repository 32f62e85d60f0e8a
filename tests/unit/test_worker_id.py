"""A worker's id is unique per incarnation, also as a container's first process (pid 1 after every restart).

Before, a compose worker killed and restarted by Docker came back as `<hostname>-1`, the id of its dead self:
the API saw the dead worker alive, and a stream it had been generating waited for its deadline (300 s).
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from services.common.registry import default_worker_id
from tests.support.procs import which

PROBE = "import socket; from services.common.registry import default_worker_id as d; print(d(socket.gethostname(), 1))"


def test_a_process_s_id_is_its_host_and_pid() -> None:
    assert default_worker_id("box", 4242) == "box-4242"


def test_pid_1_restarted_under_the_same_hostname_gets_another_id() -> None:
    """Two successive first processes of a new pid namespace, as a restarted container's are."""
    unshare = which("unshare")
    if unshare is None:
        pytest.skip("no unshare here")
    ids = []
    for _ in range(2):
        run = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", PROBE],
                             capture_output=True, text=True, check=False)  # fmt: skip
        if run.returncode != 0 and "Operation not permitted" in run.stderr:
            pytest.skip(f"a pid namespace is not permitted here: {run.stderr.strip()}")
        assert run.returncode == 0, run.stderr
        ids.append(run.stdout.strip())
    first, second = ids
    assert first.startswith(f"{socket.gethostname()}-1-") and first != second, ids
