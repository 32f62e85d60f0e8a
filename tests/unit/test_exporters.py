"""Redis's and nginx's exporters in the native stack: configured from the settings, Redis's password never in
an argument or the address the exporter logs, their scrape jobs in Prometheus's config, stub_status on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import Settings
from services.stack import exporters, nginx_conf
from services.stack.binaries import which
from services.stack.layout import Layout
from services.stack.procfile import prepare
from services.worker.detect import Facts

LINUX = Facts("Linux", "x86_64", cuda=False, rocm=False, has_mlx=False, has_llama_cpp=True)


def test_password_leaves_the_address() -> None:
    assert exporters.split_password("redis://:s%40cret@127.0.0.1:6390/0") == ("redis://127.0.0.1:6390/0", "s@cret")
    assert exporters.split_password("rediss://app:pw@redis:6379") == ("rediss://app@redis:6379", "pw")
    assert exporters.split_password("redis://127.0.0.1:6379/0") == ("redis://127.0.0.1:6379/0", "")


def test_the_stack_runs_both_exporters_and_prometheus_scrapes_them(tmp_path: Path) -> None:
    missing = [name for name in (exporters.NGINX_EXPORTER, exporters.REDIS_EXPORTER) if which(name) is None]
    assert not missing, f"{missing} not installed: `make system` installs Debian's packages"
    settings = Settings(
        run_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        redis_password="pw-123",
        nginx_status_port=18081,
        nginx_exporter_port=19113,
        redis_exporter_port=19121,
    )
    stack = prepare(settings, base_env={"PATH": "/usr/bin:/bin"}, facts=LINUX, find_llama_server=lambda: None)
    nginx, redis = stack.proc("nginx-exporter"), stack.proc("redis-exporter")
    assert "-nginx.scrape-uri=http://127.0.0.1:18081/stub_status" in nginx.argv
    assert "-web.listen-address=127.0.0.1:19113" in nginx.argv and nginx.ready_url == "http://127.0.0.1:19113/metrics"
    assert "-web.listen-address=127.0.0.1:19121" in redis.argv
    assert redis.env["REDIS_ADDR"] == "redis://127.0.0.1:6379/0" and redis.env["REDIS_PASSWORD"] == "pw-123"
    assert "pw-123" not in " ".join(redis.argv + nginx.argv) and "REDIS_PASSWORD" not in nginx.env
    config = stack.layout.prometheus_conf.read_text()
    assert "job_name: redis" in config and "127.0.0.1:19121" in config
    assert "job_name: nginx" in config and "127.0.0.1:19113" in config
    rendered = stack.layout.nginx_conf.read_text()
    assert "listen 127.0.0.1:18081;" in rendered and "stub_status;" in rendered


def test_nginx_accepts_the_stub_status_server(tmp_path: Path) -> None:
    if which("nginx") is None:
        pytest.fail("nginx is not installed: `make system` installs it")
    layout = Layout(tmp_path / "run", tmp_path / "logs")
    layout.create()
    nginx_conf.write_native(Settings(nginx_status_port=18082), layout)
    result = nginx_conf.test_config(which("nginx") or "nginx", layout)
    assert result.returncode == 0, result.stderr
