"""LiteLLM's proxy as a contender in `--gateway`: the gateway users compare us with, measured in the same run.

Its model answers with `mock_response`, so like our instant engine nothing runs behind it: what is
measured is the proxy itself. Its pins conflict with ours (openai, gunicorn, rich), so it lives in its
own venv under run/, installed on first use from the lock beside this file. It listens on a free
loopback port, every proxy variable points at a dead loopback port (nothing it might fetch can leave
the machine), and it is stopped by its process group like the bench's other processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from bench.launcher import Launcher
from services.common.ports import free_port
from services.common.settings import ROOT

REQUIREMENTS = Path(__file__).with_name("litellm-requirements.txt")
VENV = ROOT / "run" / "bench-venvs" / "litellm"
INSTALL_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 180.0
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: any outbound fetch fails at once, on this machine


class LiteLLMUnavailable(RuntimeError):
    """Its venv could not be installed (no package index here): the run goes on without the contender."""


@dataclass(frozen=True)
class RunningProxy:
    url: str
    pid: int
    api_key: str


def _stamp() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv(venv: Path = VENV) -> Path:
    """The venv's `litellm` command, installing the lock first when the venv is missing or stale."""
    marker = venv / "installed.sha256"
    command = venv / "bin" / "litellm"
    if command.exists() and marker.exists() and marker.read_text().strip() == _stamp():
        return command
    print(f"bench: installing LiteLLM's proxy into {venv} (first use; a few minutes)", file=sys.stderr, flush=True)
    log = venv.parent / "litellm-install.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        with log.open("w") as out:
            subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, stdout=out, stderr=out)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)]
            subprocess.run(pip, check=True, stdout=out, stderr=out, timeout=INSTALL_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise LiteLLMUnavailable(f"installing LiteLLM failed ({exc}); see {log}") from exc
    marker.write_text(_stamp() + "\n")
    return command


def config(model: str, tokens: int, master_key: str) -> dict:
    """One model answering `tokens` words from `mock_response`; its upstream is never called."""
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": "openai/instant",
                    "api_key": "unused",
                    "api_base": f"{DEAD_PROXY}/v1",
                    "mock_response": " ok" * tokens,
                },
            }
        ],
        "litellm_settings": {"telemetry": False},
        "general_settings": {"master_key": master_key},  # it refuses to start without one, as it should
    }


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it downloads its price list at start
            "HTTP_PROXY": DEAD_PROXY,
            "HTTPS_PROXY": DEAD_PROXY,
            "ALL_PROXY": DEAD_PROXY,
            "NO_PROXY": "127.0.0.1,localhost,::1",
        }
    )
    return env


@contextlib.contextmanager
def litellm_proxy(model: str, *, tokens: int, workers: int) -> Iterator[RunningProxy]:
    """The proxy with `workers` uvicorn processes (as many as our API replicas), ready, until the block ends."""
    command = ensure_venv()
    port = free_port()
    run_dir = ROOT / "run" / f"bench-{os.getpid()}-litellm"
    run_dir.mkdir(parents=True, exist_ok=True)
    master_key = "sk-" + secrets.token_hex(24)
    cfg = run_dir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config(model, tokens, master_key)))
    argv = [str(command), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", str(workers)]
    launcher = Launcher(run_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        proc = launcher.start("litellm", argv, offline_env(), run_dir)
        launcher.wait_ready(
            "litellm", lambda: httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200, READY_TIMEOUT_S
        )
        yield RunningProxy(url, proc.pid, master_key)
    except BaseException:
        launcher.stop_all()
        print(f"bench: LiteLLM's log is in {run_dir}", file=sys.stderr)
        raise
    launcher.stop_all()
    shutil.rmtree(run_dir, ignore_errors=True)  # its config holds this run's key; a failed run keeps its log
