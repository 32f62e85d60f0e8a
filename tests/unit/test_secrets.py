"""Secrets (issue 13, item 6) without a running stack: where the Redis password goes and where it never goes,
owner-only run and log directories, no echo of a secret in a settings error, redis.conf for TLS."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.redis_client import tls_options
from services.common.settings import Settings, SettingsError, load_settings, shown
from services.stack import redis_conf
from services.stack.layout import Layout
from services.stack.procfile import prepare
from services.worker.detect import Facts
from tests.conftest import ROOT

LINUX = Facts("Linux", "x86_64", cuda=False, rocm=False, has_mlx=False, has_llama_cpp=True)
SECRET = "s3cret-Redis-pw"


def test_only_the_processes_that_talk_to_redis_get_its_password(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path / "run", log_dir=tmp_path / "logs", redis_password=SECRET)
    outer = {"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": SECRET, "REMOTE_REDIS_URL": f"redis://:{SECRET}@h:1/0"}
    stack = prepare(settings, base_env=outer, facts=LINUX, find_llama_server=lambda: None)
    holders = {p.name for p in stack.procs if any(SECRET in v for v in p.env.values())}
    names = {p.name for p in stack.procs}
    assert holders == {"api-1", "api-2", "worker"} | ({"redis-exporter"} & names), "it reads Redis's INFO"
    assert {"redis", "nginx", "prometheus"} <= names
    for proc in stack.procs:
        assert SECRET not in " ".join(proc.argv), f"{proc.name}'s command line shows the password"
    assert stack.proc("worker").env["REDIS_URL"].startswith(f"redis://:{SECRET}@")


def test_run_and_log_directories_are_the_owner_s_only(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "run", tmp_path / "elsewhere" / "logs")
    layout.run_dir.mkdir(mode=0o755)  # one left open by an older version is closed too
    layout.create()
    for path in (layout.run_dir, layout.log_dir, layout.redis_dir, layout.nginx_dir, layout.prometheus_dir):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_a_shared_directory_is_never_closed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky and open, like /tmp
    Layout(shared, shared / "logs").create()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_the_stack_launcher_writes_files_its_owner_only_can_read(tmp_path: Path) -> None:
    """`up`/`config` set umask 077: what the stack writes (configs, logs) is 0600 whatever the shell's umask."""
    env = {"PATH": "/usr/bin:/bin", "RUN_DIR": str(tmp_path / "run"), "LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run(
        [sys.executable, "-m", "services.stack", "config"], env=env, cwd=ROOT, capture_output=True, text=True,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    layout = Layout(tmp_path / "run", tmp_path / "logs")
    for path in (layout.nginx_conf, layout.prometheus_conf, layout.redis_conf, layout.redis_password_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_malformed_setting_never_echoes_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"http://:{SECRET}@redis.example:6379/0")
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert SECRET not in message
    assert "REDIS_URL='http://:***@redis.example:6379/0'" in message and "PORT='not-a-port'" in message
    assert shown("HF_TOKEN", "hf_abc") == shown("REDIS_PASSWORD", "x") == "<hidden>"
    assert shown("API_KEYS_FILE", "run/keys.json") == "run/keys.json", "a path is not a secret"


def test_an_entry_point_with_a_bad_redis_url_prints_no_secret() -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": f"http://:{SECRET}@h:1/0"}
    result = subprocess.run(
        [sys.executable, "-m", "services.stack", "config"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "REDIS_URL" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_tls_redis_conf_and_client_options(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "run", tmp_path / "logs")
    layout.create()
    files = {"redis_tls_ca_file": tmp_path / "ca.pem", "redis_tls_cert_file": tmp_path / "server.pem"}
    settings = Settings(redis_url="rediss://127.0.0.1:6390/0", redis_tls_key_file=tmp_path / "server.key", **files)
    text = redis_conf.config(settings, layout, "pw")
    assert "port 0\n" in text and "tls-port 6390\n" in text, "TLS only: no plain port"
    assert f'tls-ca-cert-file "{tmp_path / "ca.pem"}"' in text and "tls-auth-clients optional" in text
    assert redis_conf.is_local(settings)
    assert tls_options(settings) == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(tmp_path / "ca.pem"),
        "ssl_certfile": str(tmp_path / "server.pem"),
        "ssl_keyfile": str(tmp_path / "server.key"),
    }
    assert tls_options(Settings(redis_url="redis://127.0.0.1:6379/0", **files)) == {}
    with pytest.raises(redis_conf.RedisConfigError, match="REDIS_TLS_CERT_FILE"):
        redis_conf.config(Settings(redis_url="rediss://127.0.0.1:6390/0"), layout, "pw")


def test_worker_metrics_listen_on_loopback_unless_configured() -> None:
    assert Settings().worker_metrics_host == "127.0.0.1"


def test_a_local_tls_redis_keeps_its_key_to_itself(tmp_path: Path) -> None:
    """With a local rediss:// URL the certificate settings are the server's: redis-server reads them from its
    config, and the API and the worker only verify it with the CA (they present no certificate of its)."""
    certs = {name: tmp_path / name for name in ("ca.pem", "server.pem", "server.key")}
    settings = Settings(
        run_dir=tmp_path / "run", log_dir=tmp_path / "logs", redis_url="rediss://127.0.0.1:6390/0",
        redis_tls_ca_file=certs["ca.pem"], redis_tls_cert_file=certs["server.pem"],
        redis_tls_key_file=certs["server.key"],
    )  # fmt: skip
    stack = prepare(settings, base_env={"PATH": "/usr/bin:/bin"}, facts=LINUX, find_llama_server=lambda: None)
    for name in ("api-1", "worker"):
        env = stack.proc(name).env
        assert env["REDIS_URL"].startswith("rediss://") and env["REDIS_TLS_CA_FILE"] == str(certs["ca.pem"])
        assert not env["REDIS_TLS_KEY_FILE"] and not env["REDIS_TLS_CERT_FILE"], name
    assert str(certs["server.key"]) in stack.layout.redis_conf.read_text()
