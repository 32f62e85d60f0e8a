"""Redis over TLS for real: a certificate authority and a server certificate made here with the `openssl` CLI,
the native stack's redis-server on a TLS port only (rediss:// REDIS_URL), and the API replicas, the worker and
its wrappers connecting with the CA; a chat completion through nginx proves every hop. Plain TCP and a client
that does not trust the CA are refused."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.common.ports import free_port
from tests.conftest import RUN_DIR
from tests.support.native_stack import NativeStack, e2e_settings, native_stack

pytestmark = pytest.mark.e2e


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(where: Path) -> dict[str, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost; a second CA nobody trusts."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is missing: run `make system` (Debian: apt-get install openssl)")
    where.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test {ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=where)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr", cwd=where)  # fmt: skip
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=where)  # fmt: skip
    return {name: where / f"{name}" for name in ("ca.pem", "other-ca.pem", "server.pem", "server.key")}


@pytest.fixture(scope="module")
def stack(gemma_path: object) -> Iterator[tuple[NativeStack, dict[str, Path]]]:
    run_dir = RUN_DIR / f"tls-{time.strftime('%H%M%S')}-{id(object()) % 10_000}"
    certs = make_certificates(run_dir / "certs")
    settings = e2e_settings(
        run_dir,
        redis_url=f"rediss://127.0.0.1:{free_port()}/0",
        redis_tls_ca_file=certs["ca.pem"],
        redis_tls_cert_file=certs["server.pem"],
        redis_tls_key_file=certs["server.key"],
        llama_server_parallel=2,
    )
    with native_stack(settings) as running:
        yield running, certs


def test_a_completion_goes_through_redis_over_tls(stack) -> None:
    running, _ = stack
    assert running.redis_url.startswith("rediss://")
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    reply = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] > 0
    streamed = httpx.post(f"{running.url}/v1/chat/completions", json=body | {"stream": True}, timeout=120)
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")


def test_every_client_of_that_redis_speaks_tls(stack) -> None:
    """The server has no plain port at all, so each connected client (two replicas' processes, the worker,
    its respawn wrapper) came over TLS; there are several."""
    running, certs = stack
    client = redis.Redis.from_url(running.redis_url, ssl_ca_certs=str(certs["ca.pem"]), ssl_cert_reqs="required")
    assert client.ping()
    names = [c.get("name", "") for c in client.client_list()]
    assert len(names) >= 4, names
    assert "port 0" in (running.stack.layout.redis_conf.read_text())


def test_plain_tcp_and_an_untrusted_certificate_are_refused(stack) -> None:
    running, certs = stack
    port = int(running.redis_url.rsplit(":", 1)[1].split("/")[0])
    plain = redis.Redis(host="127.0.0.1", port=port, socket_timeout=3, socket_connect_timeout=3)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    untrusting = redis.Redis.from_url(
        running.redis_url, ssl_ca_certs=str(certs["other-ca.pem"]), ssl_cert_reqs="required", socket_timeout=3
    )
    with pytest.raises(redis.ConnectionError) as caught:
        untrusting.ping()
    assert "certificate verify failed" in str(caught.value).lower()
    context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_the_worker_metrics_listen_on_loopback_only(stack) -> None:
    running, _ = stack
    port = running.settings.worker_metrics_port
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    local = [row[1] for row in listening if row[3] == "0A" and int(row[1].split(":")[1], 16) == port]
    assert local == [f"0100007F:{port:04X}"], local  # 127.0.0.1, not 0.0.0.0
