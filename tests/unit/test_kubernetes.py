"""deploy/kubernetes without a cluster: every overlay renders with `kubectl kustomize`, validates against
Kubernetes' schemas (kubernetes-validate, offline) and ours for KEDA's and the Prometheus Operator's kinds,
and agrees with the code it runs: probe paths and ports, env vars, the queue key KEDA watches, the metrics
its queries read, the drain's grace, which pods may reach Redis."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import falcon.testing
import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from rq import Queue

from services.api.app import create_app
from services.api.observability.metrics import ApiMetrics
from services.api.pipeline.jobqueue import JobQueue
from services.common import keys
from services.common.catalog import Catalog
from services.common.settings import ROOT, Settings, load_settings
from services.stack import redis_conf
from services.worker.metrics import WorkerMetrics

DEPLOY = ROOT / "deploy" / "kubernetes"
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = "1.37.0"
OUR_IMAGES = ("inference-api", "inference-worker")
OVERLAYS = ("cpu", "gpu", "mac")
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
}
NOT_SETTINGS = {"API_REPLICA": "services/api/gunicorn_conf.py"}
"""Env vars our containers get that are no Settings field, and the file that reads each from os.environ."""


def kustomize(path: Path) -> list[dict]:
    done = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(kustomize(DEPLOY / "overlays" / overlay))


@cache
def external_redis(tmp: Path) -> tuple[dict, ...]:
    """The CPU pool on a Redis elsewhere, by URL: base + pool + components/redis-external."""

    def relative(path: Path) -> str:  # kustomize refuses an absolute path to a base
        return os.path.relpath(path, tmp)

    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "inference",
                "resources": [relative(DEPLOY / "base"), relative(DEPLOY / "pools" / "llama-server-gemma-3-270m")],
                "components": [relative(DEPLOY / "components" / "redis-external")],
            }
        )
    )
    return tuple(kustomize(tmp))


def every_rendering(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, ...]]:
    out = {name: rendered(name) for name in OVERLAYS}
    out["external-redis"] = external_redis(tmp_path_factory.mktemp("external"))
    return out


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, ...]]:
    return every_rendering(tmp_path_factory)


def validate(doc: dict) -> None:
    """Raises on an invalid document; a kind with no schema here is an error too."""
    schema_file = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema_file is not None:
        schema = json.loads((DEPLOY / "schemas" / schema_file).read_text())
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def pod_specs(docs: tuple[dict, ...]) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def ours(spec: dict) -> list[dict]:
    return [c for c in containers(spec) if c["image"].split(":")[0].split("/")[-1] in OUR_IMAGES]


def config_maps(docs: tuple[dict, ...]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def env_of(container: dict, docs: tuple[dict, ...]) -> dict[str, str | None]:
    """A container's environment: values from ConfigMaps resolved, those from Secrets or fields as None."""
    maps = config_maps(docs)
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]]
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def arg(container: dict, flag: str) -> str:
    argv = container.get("args", [])
    return argv[argv.index(flag) + 1]


def container_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)


def listening_port(container: dict) -> int:
    """The port our process listens on, from its command line: gunicorn's --bind or the worker's --metrics-port."""
    argv = container["args"]
    if "--bind" in argv:
        return int(arg(container, "--bind").rsplit(":", 1)[1])
    return int(arg(container, "--metrics-port"))


@cache
def api_routes() -> dict[str, dict]:
    """The API's own OpenAPI document (built from its routes and their declared access), without Redis."""
    settings = Settings()
    client = redis.Redis(port=1, socket_connect_timeout=0.1)
    app = create_app(settings, client, Catalog.from_yaml(settings.models_file, settings.default_model))
    return falcon.testing.TestClient(app).simulate_get("/openapi.json").json["paths"]


def metric_labels() -> dict[str, set[str]]:
    """Every metric name the API and worker export (as Prometheus exposes them) and its labels."""
    api = ApiMetrics(models=["m"])
    worker = WorkerMetrics("llama_server", worker="w")
    api.requests.labels("/x", "GET", "200", "m").inc()
    worker.queue_time("m", 0.1)
    with worker.running("m"):
        pass
    found: dict[str, set[str]] = {}
    for registry in (api.registry, worker.registry):
        for family in registry.collect():
            for sample in family.samples:
                found.setdefault(sample.name, set()).update(sample.labels)
            found.setdefault(family.name, set())
    return found


# -- the manifests are well formed -----------------------------------------------------------------------
@pytest.mark.parametrize("name", [*OVERLAYS, "external-redis"])
def test_renders_and_validates(name: str, renderings: dict[str, tuple[dict, ...]]) -> None:
    docs = renderings[name]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"ServiceMonitor", "TriggerAuthentication", "Ingress"} <= kinds
    for doc in docs:
        try:
            validate(doc)
        except Exception as exc:  # name the document, then fail
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_validation_catches_mistakes() -> None:
    """The validators bite: a misspelt container field, a misspelt scaler key, a kind nobody knows."""
    docs = rendered("cpu")
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    scaled = copy.deepcopy(next(d for d in docs if d["kind"] == "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["listname"] = scaled["spec"]["triggers"][0]["metadata"].pop("listName")
    unknown = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}}
    for bad in (deployment, scaled, unknown):
        with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError,
                            kubernetes_validate.SchemaNotFoundError)):  # fmt: skip
            validate(bad)


def test_every_overlay_has_its_parts() -> None:
    for name in OVERLAYS:
        docs = rendered(name)
        named = {(d["kind"], d["metadata"]["name"]) for d in docs}
        assert ("StatefulSet", "redis") in named, name
        assert ("Deployment", "api") in named and ("HorizontalPodAutoscaler", "api") in named, name
    gpu = pod_specs(rendered("gpu"))
    limits = [c.get("resources", {}).get("limits", {}) for s in gpu.values() for c in containers(s)]
    assert any(limit.get("nvidia.com/gpu") for limit in limits)
    mac = {(d["kind"], d["metadata"]["name"]): d for d in rendered("mac")}
    assert mac[("Service", "redis-published")]["spec"]["type"] == "LoadBalancer"
    assert not any(d["kind"] == "ScaledObject" for d in rendered("mac")), "the Mac's worker runs outside"


# -- the manifests agree with the code ---------------------------------------------------------------------
def test_probes_reach_public_routes_on_the_ports_we_listen_on() -> None:
    routes = api_routes()
    for name in OVERLAYS:
        for pod, spec in pod_specs(rendered(name)).items():
            for c in ours(spec):
                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    probe = c.get(kind, {})
                    assert "host" not in probe.get("httpGet", {}), "the kubelet would probe the node, not the pod"
                    if c["name"] == "llama-server" and probe:  # its /health on its --port, from inside the pod
                        command = probe["exec"]["command"][-1]
                        assert f"127.0.0.1:{arg(c, '--port')}/health" in command, (pod, kind)
                    if c["name"] == "llama-server":
                        continue
                    port = probe.get("httpGet", probe.get("tcpSocket", {})).get("port")
                    if port is None:
                        continue
                    assert container_port(c, port) == listening_port(c), (pod, c["name"], kind)
                    path = probe.get("httpGet", {}).get("path")
                    if path is None:
                        continue
                    if "--bind" in c["args"]:  # the kubelet sends no key: a public GET route
                        assert path in routes and routes[path]["get"]["security"] == [], (pod, kind, path)
                    else:
                        assert path == "/metrics", (pod, kind)
            if any("--bind" in c.get("args", []) for c in ours(spec)):
                api = ours(spec)[0]
                assert api.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/health", pod


def test_service_monitors_scrape_routes_that_exist_with_the_key_they_need() -> None:
    routes = api_routes()
    docs = rendered("cpu")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services.values() if selector.items() <= s["metadata"].get("labels", {}).items()]
        assert chosen, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in chosen)
            if selector.get("app.kubernetes.io/component") == "api":
                assert endpoint["path"] in routes
                needs_key = routes[endpoint["path"]]["get"]["security"] != []
                assert needs_key == ("authorization" in endpoint), "an admin route needs the scrape token"


def test_every_env_var_is_a_setting_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {name.upper() for name in Settings.model_fields}
    for name, reader in NOT_SETTINGS.items():
        assert f'"{name}"' in (ROOT / reader).read_text(), f"{reader} no longer reads {name}"
    for overlay in [*OVERLAYS]:
        for pod, spec in pod_specs(rendered(overlay)).items():
            for c in ours(spec):
                env = env_of(c, rendered(overlay))
                unknown = set(env) - known - set(NOT_SETTINGS)
                assert not unknown, f"{overlay}/{pod}/{c['name']}: no setting reads {sorted(unknown)}"
                with monkeypatch.context() as m:
                    for var, value in env.items():
                        m.setenv(var, "from-a-secret" if value is None else value)
                    load_settings()  # raises SettingsError naming a malformed value


def test_scaled_objects_watch_the_queue_rq_writes_for_their_pool() -> None:
    names = metric_labels()
    jobs = JobQueue(redis.Redis(port=1), stream_ttl=60)
    for overlay in ("cpu", "gpu"):
        docs = rendered(overlay)
        specs = pod_specs(docs)
        config = config_maps(docs)[next(n for n in config_maps(docs) if n.startswith("inference-config"))]
        auths = {d["metadata"]["name"] for d in docs if d["kind"] == "TriggerAuthentication"}
        scaled = [d for d in docs if d["kind"] == "ScaledObject"]
        assert scaled, overlay
        for so in scaled:
            worker = next(c for c in ours(specs[so["spec"]["scaleTargetRef"]["name"]]) if c["name"] == "worker")
            model, slots = arg(worker, "--model"), arg(worker, "--slots")
            assert so["spec"]["minReplicaCount"] == 0, "scale to zero"
            queue = next(t for t in so["spec"]["triggers"] if t["type"] == "redis-sentinel")
            meta = queue["metadata"]
            expected = Queue(keys.queue_name(model), connection=redis.Redis(port=1)).key
            assert expected == jobs.queue(model).key == f"rq:queue:{keys.queue_name(model)}"
            assert meta["listName"] == expected
            assert meta["listLength"] == slots, "a replica per slots' worth of waiting jobs"
            assert [a.strip() for a in meta["addresses"].split(",")] == config["REDIS_SENTINELS"].split(",")
            assert meta["sentinelMaster"] == config["REDIS_MASTER_NAME"]
            assert queue["authenticationRef"]["name"] in auths
            for trigger in (t for t in so["spec"]["triggers"] if t["type"] == "prometheus"):
                query = trigger["metadata"]["query"]
                for metric, labels in re.findall(r"([a-z_]+)\{([^}]*)\}", query):
                    assert metric in names, f"{metric}: no such metric in our code"
                    for label in re.findall(r"([a-z_]+)=", labels):
                        assert label in names[metric], f"{metric} has no label {label}"
                    assert f'model_name="{model}"' in labels


def test_grace_outlasts_the_drain() -> None:
    gunicorn_conf = (ROOT / "services/api/gunicorn_conf.py").read_text()
    graceful = int(re.search(r"^graceful_timeout = (\d+)", gunicorn_conf, re.M)[1])
    for overlay in ("cpu", "gpu"):
        docs = rendered(overlay)
        for pod, spec in pod_specs(docs).items():
            mine = ours(spec)
            if not mine:
                continue
            grace = spec["terminationGracePeriodSeconds"]
            timeout = float(env_of(mine[-1], docs).get("REQUEST_TIMEOUT") or Settings().request_timeout)
            worker = next((c for c in spec["containers"] if c["name"] == "worker"), None)
            if worker is None:  # the API: the preStop's pause, then gunicorn's graceful stop
                pause = mine[0]["lifecycle"]["preStop"]["sleep"]["seconds"]
                assert grace >= pause + graceful, pod
                continue
            assert grace >= timeout + 10, f"{pod}: {grace}s grace, requests may take {timeout}s to finish"
            hook = " ".join(worker["lifecycle"]["preStop"]["exec"]["command"])
            assert "kill -TERM 1" in hook and "while kill -0 1" in hook, "preStop drains and waits for the exit"
            for engine in spec.get("initContainers", []):  # outlives the drain: a native sidecar
                assert engine.get("restartPolicy") == "Always", f"{pod}/{engine['name']} would stop mid-drain"
                assert engine.get("startupProbe"), f"{pod}/{engine['name']}: the worker would start before it"


def test_only_our_clients_reach_redis_and_only_the_ingress_reaches_the_api() -> None:
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
        assert policies["default-deny-ingress"]["podSelector"] == {}
        redis_policy = policies["redis-clients"]
        allowed = [f["podSelector"]["matchLabels"] for r in redis_policy["ingress"] for f in r["from"]
                   if "podSelector" in f and "namespaceSelector" not in f]  # fmt: skip
        templates = {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] in ("Deployment",)}
        for name, template in templates.items():
            labels = template["metadata"]["labels"]
            talks_to_redis = any(
                "REDIS_PASSWORD" in {e["name"] for e in c.get("env", [])} for c in containers(template["spec"])
            )
            admitted = any(sel.items() <= labels.items() for sel in allowed)
            assert talks_to_redis == admitted, f"{overlay}/{name}: reaches Redis {talks_to_redis}, admitted {admitted}"
        api = policies["api-from-ingress"]
        assert api["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "api"}
        sources = {f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for r in api["ingress"]
                   for f in r["from"]}  # fmt: skip
        assert sources == {"ingress-nginx", "monitoring"}


def test_dashboards_and_catalog_come_from_the_repository_files() -> None:
    maps = config_maps(rendered("cpu"))
    dashboards = next(v for k, v in maps.items() if k.startswith("inference-grafana-dashboards"))
    files = sorted((ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"))
    assert sorted(dashboards) == [f.name for f in files], "a dashboard is missing from the ConfigMap"
    assert all(dashboards[f.name] == f.read_text() for f in files)
    catalog = next(v for k, v in maps.items() if k.startswith("inference-models"))
    assert catalog["models.yaml"] == (ROOT / "models" / "models.yaml").read_text()


def test_sentinel_timing_is_the_one_the_failover_test_measures() -> None:
    script = (DEPLOY / "components" / "redis-sentinel" / "configure.sh").read_text()
    for option, value in redis_conf.SENTINEL_TIMING.items():
        assert re.search(rf"sentinel {option} \$MASTER_NAME {value}\b", script), option
    quorum = re.search(r"sentinel monitor \$MASTER_NAME \$master 6379 (\d+)", script)
    assert quorum and int(quorum[1]) == redis_conf.SENTINEL_QUORUM
