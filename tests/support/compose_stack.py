"""docker-compose.yml run for real by the tests: built from Debian's packages, up, probed, broken and taken down.

The files are the production one, compose/docker-compose.ca.yml (the host's CA bundle as a build secret) and
compose/docker-compose.test.yml (images made where no registry answers; nginx published on 127.0.0.1 only).
The project has a name of its own, its ports are free ones, its keys live in a folder of its own, and `down`
removes its containers, networks and volumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.ports import free_port
from tests.support import compose_cli, compose_images

ROOT = Path(__file__).resolve().parents[2]
MAC = ROOT / "compose" / "docker-compose.mac.yml"
FILES = (
    ROOT / "docker-compose.yml",
    ROOT / "compose" / "docker-compose.ca.yml",
    ROOT / "compose" / "docker-compose.test.yml",
)
MODEL = "gemma-3-270m"
EMBEDDER = "all-minilm-l6-v2"


@dataclass
class ComposeStack:
    project: str
    env: dict[str, str]
    url: str
    """nginx, published on 127.0.0.1."""
    prometheus: str
    key: str
    """A user key, made by the keys CLI on the host."""
    admin: str
    figures: dict[str, object] = field(default_factory=dict)

    def compose(
        self, *args: str, timeout: float = 900, check: bool = True, files: tuple[Path, ...] = FILES
    ) -> subprocess.CompletedProcess[str]:
        argv = [*compose_cli.compose_command(), "--project-directory", str(ROOT), "--project-name", self.project]
        argv += [a for f in files for a in ("-f", str(f))]
        result = subprocess.run(
            [*argv, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def containers(self, service: str) -> list[dict]:
        """`docker inspect` of the service's containers, running or not."""
        ids = self.compose("ps", "--all", "--quiet", service).stdout.split()
        out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def inspect(self, service: str) -> dict:
        """The service's one container."""
        (container,) = self.containers(service)
        return container

    def healthy(self, service: str) -> bool:
        state = self.inspect(service)["State"]
        return state["Running"] and state.get("Health", {}).get("Status") == "healthy"

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def chat(
        self, content: str = "Hello", max_tokens: int = 4, timeout: float = 60, model: str = MODEL
    ) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=self.headers(), timeout=timeout)

    def memory(self) -> dict[str, float]:
        """MiB each of the project's running containers uses now (`docker stats`, the cgroup's usage less cache)."""
        ids = self.compose("ps", "--quiet").stdout.split()
        out = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *ids],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        usage = {}
        for line in out.splitlines():
            name, mem = line.split("\t")
            usage[name.removeprefix(self.project + "-")] = mib(mem.split("/")[0].strip())
        return usage

    def record(self, name: str, value: object) -> None:
        self.figures[name] = value
        print(f"\ncompose {name}: {json.dumps(value)}")


def mib(text: str) -> float:
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * units[unit], 1)
    raise ValueError(f"not a docker stats size: {text}")


def image_bytes(tag: str) -> int:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True)
    return int(out.stdout.strip())


def cli(*args: str, env: dict[str, str]) -> str:
    """The keys CLI on the host, as a user runs it."""
    out = subprocess.run([sys.executable, "-m", "services.keys", *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def wait_for(check: object, timeout: float, what: str, interval: float = 0.5) -> float:
    """Seconds until `check()` is true; every exception counts as not yet."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


@contextlib.contextmanager
def compose_stack(figures_file: Path) -> Iterator[ComposeStack]:
    """Build, start with a key made on the host, yield once the first chat answered; always taken down."""
    started = time.monotonic()
    images = compose_images.environment()
    keys_dir = Path(tempfile.mkdtemp(prefix="compose-keys-", dir=figures_file.parent))
    keys_dir.chmod(0o755)  # mounted at /keys: the replicas' uid 10001 must be able to enter it
    port, prometheus_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "API_KEYS", "ALLOW_OPEN", "DEFAULT_"))},
        **images,
        "REDIS_PASSWORD": "compose-" + os.urandom(8).hex(),
        "GRAFANA_ADMIN_PASSWORD": "unused-" + os.urandom(4).hex(),
        "LLAMA_SERVER_API_KEY": "llama-" + os.urandom(12).hex(),
        "PORT": str(port),
        "PROMETHEUS_PORT": str(prometheus_port),
        "GRAFANA_PORT": str(free_port()),
        "KEYS_DIR": str(keys_dir),
        "API_KEYS_FILE": "run/keys/api-keys.json",  # compose reads only whether it is set: /keys/api-keys.json
        "ALLOW_OPEN": "false",
        "VLLM_MODEL": "smollm2-135m-instruct",  # the gpu profile's, served by a llama-server standing in for vLLM
        "REDIS_PUBLISH_PORT": str(free_port()),  # the Mac file's (compose/docker-compose.mac.yml), on 127.0.0.1
    }
    keys_file = keys_dir / "api-keys.json"
    host_env = {k: v for k, v in os.environ.items() if k != "API_KEYS_FILE"}
    key = cli("--file", str(keys_file), "create", "compose-user", env=host_env)
    admin = cli("--file", str(keys_file), "create", "prometheus", "--admin", env=host_env)
    (keys_dir / "prometheus.token").write_text(admin + "\n")  # as README's `... > run/keys/prometheus.token`
    stack = ComposeStack(
        f"inference-test-{os.getpid()}", env, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prometheus_port}",
        key, admin,
    )  # fmt: skip
    stack.record("images_made_s", round(time.monotonic() - started, 1))
    try:
        built = time.monotonic()
        stack.compose("build", timeout=3600)
        stack.record("build_s", round(time.monotonic() - built, 1))
        up = time.monotonic()
        stack.compose("up", "--detach", "--wait", "--wait-timeout", "600", timeout=900)
        stack.record("up_healthy_s", round(time.monotonic() - up, 1))
        wait_for(lambda: stack.chat().status_code == 200, 120, "a first chat through nginx")
        stack.record("up_to_first_answer_s", round(time.monotonic() - up, 1))
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--timestamps", check=False).stdout
        (figures_file.parent / f"compose-{stack.project}.log").write_text(logs)
        stack.compose("--profile", "gpu", "down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
        # what this build left untagged (the previous run's images); nobody else's images carry the label
        subprocess.run(["docker", "image", "prune", "--force", "--filter", "label=inference-test"], capture_output=True)
        for path in keys_dir.iterdir():
            path.unlink()
        keys_dir.rmdir()
        figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
        figures_file.write_text(json.dumps(figures | stack.figures, indent=2) + "\n")
