"""The native stack's generated configs: Redis secrets, Prometheus targets, nginx values, the process list."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from services.common.catalog import Catalog
from services.common.settings import Settings
from services.stack import exporters, nginx_conf, prometheus_conf, redis_conf
from services.stack.layout import Layout
from services.stack.procfile import prepare, settings_env
from services.worker import sidecar
from services.worker.detect import Facts

LINUX = Facts("Linux", "x86_64", cuda=False, rocm=False, has_mlx=False, has_llama_cpp=True)
MAC = Facts("Darwin", "arm64", cuda=False, rocm=False, has_mlx=True, has_llama_cpp=True)
BINARY = Path("/opt/llama/llama-server")


def layout_in(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "run", tmp_path / "run" / "logs")
    layout.create()
    return layout


def test_redis_password_precedence_and_generation(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    assert redis_conf.password(Settings(redis_password="set"), layout) == "set"
    in_url = Settings(redis_password="", redis_url="redis://:in%40url@127.0.0.1:6379/0")
    assert redis_conf.password(in_url, layout) == "in@url"
    neither = Settings(redis_password="", redis_url="redis://127.0.0.1:6379/0")
    generated = redis_conf.password(neither, layout)
    assert len(generated) >= 32 and redis_conf.password(neither, layout) == generated  # kept, not remade
    assert stat.S_IMODE(layout.redis_password_file.stat().st_mode) == 0o600


def test_redis_url_and_config(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    settings = Settings(redis_url="redis://127.0.0.1:7000/2", redis_bind="127.0.0.1 10.231.0.1")
    assert redis_conf.url_with_password(settings, "p@ss/word") == "redis://:p%40ss%2Fword@127.0.0.1:7000/2"
    assert redis_conf.url_with_password(settings, "x", host="10.231.0.1") == "redis://:x@10.231.0.1:7000/2"
    text = redis_conf.config(settings, layout, 'quote" and \\ slash')
    assert 'requirepass "quote\\" and \\\\ slash"' in text
    assert "port 7000" in text and "bind 127.0.0.1 10.231.0.1" in text and "protected-mode yes" in text
    redis_conf.write_conf(settings, layout, "secret")
    assert stat.S_IMODE(layout.redis_conf.stat().st_mode) == 0o600
    assert redis_conf.is_local(settings) and not redis_conf.is_local(Settings(redis_url="redis://10.0.0.5:6379/0"))


def test_prometheus_targets_every_replica_and_the_worker() -> None:
    cfg = prometheus_conf.native(Settings(api_replicas=3, api_base_port=8200, worker_metrics_port=9300))
    jobs = {job["job_name"]: job["static_configs"] for job in cfg["scrape_configs"]}
    assert [c["targets"][0] for c in jobs["api"]] == ["127.0.0.1:8200", "127.0.0.1:8201", "127.0.0.1:8202"]
    assert jobs["worker"][0]["targets"] == ["127.0.0.1:9300"]
    no_worker = prometheus_conf.native(Settings(worker_metrics_port=0))
    assert "worker" not in {job["job_name"] for job in no_worker["scrape_configs"]}


def test_prometheus_runs_without_its_lifecycle_api(tmp_path: Path) -> None:
    """POST /-/quit or /-/reload take no credentials: with --web.enable-lifecycle anyone who reaches the port
    could stop Prometheus."""
    argv = prometheus_conf.command("/usr/bin/prometheus", Settings(prometheus_port=9555), layout_in(tmp_path))
    assert not [a for a in argv if "lifecycle" in a], argv
    assert "--web.listen-address=127.0.0.1:9555" in argv


def test_prometheus_scrapes_llama_server_with_its_key(tmp_path: Path) -> None:
    """llama-server's /metrics needs the key: natively from the file the worker writes, in compose from one
    the container writes from LLAMA_SERVER_API_KEY."""
    layout = layout_in(tmp_path)
    prometheus_conf.write_native(Settings(llama_server_port=8299), layout, llama_server=True)
    cfg = yaml.safe_load(layout.prometheus_conf.read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "llama-server"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": str(layout.llama_server_key)}
    (composed,) = [j for j in prometheus_conf.compose()["scrape_configs"] if j["job_name"] == "llama-server"]
    assert composed["authorization"]["credentials_file"] == prometheus_conf.COMPOSE_LLAMA_SERVER_KEY


def test_nginx_values_come_from_settings(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    settings = Settings(host="127.0.0.1", port=8123, api_replicas=2, api_base_port=8300, max_request_bytes=2048)
    text = nginx_conf.render(nginx_conf.TEMPLATE.read_text(), nginx_conf.native_values(settings, layout))
    assert "listen 127.0.0.1:8123 " in text and "client_max_body_size 2048;" in text
    assert "server 127.0.0.1:8300 max_fails=1" in text and "server 127.0.0.1:8301 max_fails=1" in text
    assert "proxy_read_timeout 360s;" in text and "${" not in text
    with pytest.raises(nginx_conf.NginxConfigError, match="NGINX_LISTEN"):
        nginx_conf.render("listen ${NGINX_LISTEN};", {})
    with pytest.raises(nginx_conf.NginxConfigError):
        nginx_conf.upstream_servers([])


def test_settings_pass_to_children_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(port=8555, api_replicas=3, log_prompts=True, request_timeout=12.5, redis_bind="127.0.0.1 ::1")
    for name, value in settings_env(original).items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_process_list(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path / "run", log_dir=tmp_path / "logs", api_replicas=2, redis_password="pw")
    stack = prepare(settings, base_env={"PATH": "/usr/bin:/bin"}, facts=LINUX, find_llama_server=lambda: None)
    installed = [e.name for e in exporters.native(settings, {}, "redis://127.0.0.1:6379/0")]  # Debian's, if any
    assert [p.name for p in stack.procs] == ["redis", "api-1", "api-2", "worker", "nginx", *installed, "prometheus"]
    api1, api2 = stack.proc("api-1"), stack.proc("api-2")
    assert api1.env["PROMETHEUS_MULTIPROC_DIR"] != api2.env["PROMETHEUS_MULTIPROC_DIR"]
    assert api1.env["REDIS_URL"] == "redis://:pw@127.0.0.1:6379/0" == stack.proc("worker").env["REDIS_URL"]
    assert "pw" not in " ".join(stack.proc("redis").argv)  # the password stays in the 0600 config file
    assert stack.layout.nginx_conf.exists() and stack.layout.prometheus_conf.exists()
    assert [p.name for p in prepare(settings, worker=False).procs].count("worker") == 0


def engine_procs(tmp_path: Path, facts: Facts, binary: Path | None = BINARY, **changes) -> dict[str, tuple[str, ...]]:
    settings = Settings(run_dir=tmp_path / "run", log_dir=tmp_path / "logs", redis_password="pw", **changes)
    stack = prepare(settings, base_env={}, facts=facts, find_llama_server=lambda: binary)
    return {p.name: p.argv for p in stack.procs if p.name in ("llama-server", "worker")}


def test_the_stack_runs_llama_server_where_auto_would_run_llama_cpp(tmp_path: Path) -> None:
    procs = engine_procs(tmp_path, LINUX, llama_server_parallel=6, llama_server_port=8299, n_ctx=2048)
    assert list(procs) == ["worker"], "the worker starts llama-server as its own child"
    worker = " ".join(procs["worker"])
    assert "-m services.stack.respawn worker -- " in worker, "the worker is restarted when it dies"
    assert "--engine llama_server --model gemma-3-270m --slots 6" in worker
    assert worker.endswith(
        f"--sidecar-key-file {tmp_path / 'run' / 'llama-server.key'} --spawn-llama-server --on-demand"
    ), "LOAD_ON_DEMAND (default): the default model's worker loads other catalog models on request"
    prometheus = prometheus_conf.native(Settings(llama_server_port=8299), llama_server=True)
    jobs = {job["job_name"]: job["static_configs"] for job in prometheus["scrape_configs"]}
    assert jobs["llama-server"][0]["targets"] == ["127.0.0.1:8299"]


def test_the_worker_s_llama_server_command(tmp_path: Path) -> None:
    settings = Settings(llama_server_parallel=6, llama_server_port=8299, n_ctx=2048)
    cmd = sidecar.command(settings, Catalog.from_yaml(settings.models_file, settings.default_model))
    server = " ".join(cmd.argv(BINARY))
    assert server.startswith(f"nice -n 10 {BINARY} --model ") and "--port 8299 --parallel 6 --ctx-size 12288" in server
    assert "--alias gemma-3-270m" in server and "--chat-template gemma" in server
    assert cmd.url == "http://127.0.0.1:8299"
    # a key of its own, made at each start, given in the environment and never in argv (`ps` shows argv)
    assert len(cmd.api_key) >= 32 and cmd.api_key not in server
    assert cmd.api_key != sidecar.command(settings, Catalog.from_yaml(settings.models_file, "gemma-3-270m")).api_key
    assert cmd.env({"PATH": "/bin", "LLAMA_API_KEY": "inherited"}) == {"PATH": "/bin", "LLAMA_API_KEY": cmd.api_key}
    # CORS for its own origin only, never with credentials (llama-server's default echoes any Origin)
    assert "--cors-origins http://127.0.0.1:8299 --no-cors-credentials" in server


def test_the_key_file_is_its_owner_s_alone(tmp_path: Path) -> None:
    key_file = tmp_path / "run" / "llama-server.key"
    sidecar.write_key(key_file, "first")
    key_file.chmod(0o644)  # a file left readable by a careless hand is replaced, not rewritten in place
    sidecar.write_key(key_file, "second")
    assert key_file.read_text() == "second\n" and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in key_file.parent.iterdir()] == ["llama-server.key"]


def test_make_up_without_llama_cpp_python_still_runs_llama_server(tmp_path: Path) -> None:
    """`make up` installs llama-server alone: no in-process engine must not mean no engine."""
    bare = Facts("Linux", "x86_64", cuda=False, rocm=False, has_mlx=False, has_llama_cpp=False)
    assert "--spawn-llama-server" in engine_procs(tmp_path, bare)["worker"]


@pytest.mark.parametrize(
    ("facts", "binary", "changes", "engine"),
    [
        (LINUX, None, {}, "auto"),  # no llama-server built: in-process llama.cpp, as before
        (MAC, BINARY, {}, "auto"),  # Apple Silicon: the worker picks MLX
        (LINUX, BINARY, {"inference_engine": "llama_cpp"}, "llama_cpp"),  # asked for by name
        (LINUX, BINARY, {"llama_server_url": "http://10.0.0.5:8080"}, "auto"),  # a llama-server of your own
    ],
)
def test_no_sidecar_where_another_engine_applies(tmp_path, facts, binary, changes, engine) -> None:
    procs = engine_procs(tmp_path, facts, binary, **changes)
    assert list(procs) == ["worker"]
    assert f"--engine {engine} " in " ".join(procs["worker"])


def test_llama_server_by_name_runs_even_on_a_mac(tmp_path: Path) -> None:
    procs = engine_procs(tmp_path, MAC, inference_engine="llama_server")
    assert "--spawn-llama-server" in procs["worker"], "named explicitly, it runs even on a Mac"
