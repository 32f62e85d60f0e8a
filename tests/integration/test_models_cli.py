"""`python -m services.models` with the real huggingface_hub client against a stand-in hub (HF_ENDPOINT on
127.0.0.1) serving the GGUFs we ship: a quantization picked from a repo, a file named, a gated repo, a missing
file, a hash that does not match, a download cut in the middle and resumed; and list/show/remove.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.common.catalog import Catalog
from tests.support.hf_hub import FakeHub, HubRepo

ROOT = Path(__file__).resolve().parents[2]
GEMMA = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
README = b"# a model card\n"
MLX_GEMMA = ROOT / "models" / "mlx" / "gemma-3-270m"
QWEN_CONFIG = b'{"model_type": "qwen2", "max_position_embeddings": 32768}'

pytestmark = pytest.mark.skipif(not (GEMMA.exists() and SMOLLM2.exists()), reason="run `make models` first")


@pytest.fixture
def hub():
    repos = {
        "bartowski/demo-GGUF": HubRepo(
            files={"README.md": README, "demo-Q4_K_M.gguf": SMOLLM2, "demo-Q8_0.gguf": GEMMA, "demo-Q4_K_S.gguf": GEMMA}
        ),
        "google/gemma-gated-GGUF": HubRepo(files={"gemma-3-270m-Q4_K_M.gguf": GEMMA}, gated=True),
        "evil/tampered-GGUF": HubRepo(files={"model-Q4_1.gguf": SMOLLM2}, listed_sha256={"model-Q4_1.gguf": "0" * 64}),
        "flaky/cut-GGUF": HubRepo(files={"model-Q4_1.gguf": SMOLLM2}, cut_after={"model-Q4_1.gguf": 30_000_000}),
        "Qwen/Qwen2.5-0.5B-Instruct": HubRepo(
            files={"config.json": QWEN_CONFIG, "model.safetensors": b"\0" * 20_000, "README.md": README}
        ),
        "acme/not-a-model": HubRepo(files={"README.md": README}),
    }
    if MLX_GEMMA.is_dir():  # the MLX copy `make models-mlx` converts (the test extras' setup does)
        repos["mlx-community/gemma-3-270m-8bit"] = HubRepo(files={p.name: p for p in MLX_GEMMA.iterdir()})
    with FakeHub(repos) as running:
        yield running


@pytest.fixture
def place(tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy(ROOT / "models" / "models.yaml", models_dir / "models.yaml")
    return models_dir


def run(hub: FakeHub, place: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(place.parent / "hf-home"),
        MODELS_DIR=str(place),
        MODELS_FILE=str(place / "models.yaml"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "services.models", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def entry(place: Path, model_id: str) -> dict:
    return yaml.safe_load((place / "models.yaml").read_text())["models"][model_id]


def test_add_by_quantization_records_what_the_hub_and_the_gguf_say(hub, place):
    before = (place / "models.yaml").read_text()
    done = run(hub, place, "add", "bartowski/demo-GGUF:Q4_K_M")
    assert done.returncode == 0, done.stderr
    sha, _, size = hub.digests("bartowski/demo-GGUF", "demo-Q4_K_M.gguf")
    got = entry(place, "demo-q4_k_m")
    src = got["sources"]["llama_server"]
    assert src == {
        "path": "hf/bartowski/demo-GGUF/demo-Q4_K_M.gguf",
        "hf_repo": "bartowski/demo-GGUF",
        "hf_file": "demo-Q4_K_M.gguf",
        "revision": hub.repos["bartowski/demo-GGUF"].commit,
        "sha256": sha,
        "size": size,
    }
    assert got["sources"]["llama_cpp"] == src
    assert (got["context_length"], got["architecture"]) == (8192, "llama")  # SmolLM2's own metadata
    assert (place / src["path"]).read_bytes() == SMOLLM2.read_bytes()
    # only the chosen quantization came down; the file's comments and other models are as they were
    downloads = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]
    assert downloads == [
        "/bartowski/demo-GGUF/resolve/" + hub.repos["bartowski/demo-GGUF"].commit + "/demo-Q4_K_M.gguf"
    ]
    after = (place / "models.yaml").read_text()
    assert after.startswith(before.rstrip("\n")) and "# Model ids, their aliases" in after
    catalog = Catalog.from_yaml(place / "models.yaml")
    assert catalog.resolve("bartowski/demo-GGUF:Q4_K_M") == "demo-q4_k_m"
    assert catalog.default == "gemma-3-270m"

    listed = run(hub, place, "list")
    assert listed.returncode == 0 and "demo-q4_k_m" in listed.stdout
    shown = run(hub, place, "show", "demo-q4_k_m")
    assert shown.returncode == 0, shown.stderr
    assert "architecture llama, context 8192" in shown.stdout and "<|im_start|>" in shown.stdout

    again = run(hub, place, "add", "bartowski/demo-GGUF:Q4_K_M")
    assert again.returncode == 1 and "already in the catalog" in again.stderr

    gone = run(hub, place, "remove", "demo-q4_k_m")
    assert gone.returncode == 0, gone.stderr
    assert (place / "models.yaml").read_text() == before
    assert not (place / src["path"]).exists()


def test_a_quantization_that_fits_two_files_or_none_is_one_line(hub, place):
    none = run(hub, place, "add", "bartowski/demo-GGUF:Q2_K")
    assert none.returncode == 1 and none.stderr.count("\n") == 1
    assert "no GGUF file for Q2_K" in none.stderr and "demo-Q8_0.gguf" in none.stderr
    two = run(hub, place, "add", "bartowski/demo-GGUF")
    assert two.returncode == 1 and "more than one GGUF fits" in two.stderr


def test_add_a_named_file_with_an_id(hub, place):
    done = run(
        hub,
        place,
        "add",
        "bartowski/demo-GGUF",
        "--file",
        "demo-Q8_0.gguf",
        "--id",
        "gemma-q8",
        "--chat-format",
        "gemma",
    )
    assert done.returncode == 0, done.stderr
    got = entry(place, "gemma-q8")
    assert (got["context_length"], got["architecture"], got["chat_format"]) == (32768, "gemma3", "gemma")


def test_gated_repo_needs_the_token(hub, place):
    before = (place / "models.yaml").read_text()
    refused = run(hub, place, "add", "google/gemma-gated-GGUF:Q4_K_M")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "models: google/gemma-gated-GGUF is gated: accept its terms on the hub, "
        "then set HF_TOKEN to a token of that account"
    )
    assert (place / "models.yaml").read_text() == before
    done = run(hub, place, "add", "google/gemma-gated-GGUF:Q4_K_M", token=hub.token)
    assert done.returncode == 0, done.stderr
    assert entry(place, "gemma-3-270m-q4_k_m")["architecture"] == "gemma3"


def test_missing_file_and_repo_are_one_line(hub, place):
    missing = run(hub, place, "add", "bartowski/demo-GGUF", "--file", "nope.gguf")
    assert missing.returncode == 1 and missing.stderr.strip() == "models: bartowski/demo-GGUF: no file nope.gguf"
    no_repo = run(hub, place, "add", "nobody/nothing-GGUF:Q4_K_M")
    assert no_repo.returncode == 1 and "no such repository" in no_repo.stderr and "Traceback" not in no_repo.stderr


def test_a_file_whose_hash_differs_from_the_hubs_is_refused(hub, place):
    before = (place / "models.yaml").read_text()
    refused = run(hub, place, "add", "evil/tampered-GGUF:Q4_1")
    assert refused.returncode == 1
    assert "model-Q4_1.gguf: SHA-256" in refused.stderr and "where the hub lists 0000" in refused.stderr
    assert (place / "models.yaml").read_text() == before
    assert not (place / "hf").exists()
    blobs = list((place.parent / "hf-home").rglob("blobs/*"))
    assert blobs == []  # taken out of huggingface_hub's cache: a retry downloads it again


def test_a_download_cut_in_the_middle_resumes(hub, place):
    done = run(hub, place, "add", "flaky/cut-GGUF:Q4_1")
    assert done.returncode == 0, done.stderr
    gets = [(p, r) for m, p, r in hub.requests if m == "GET" and "/resolve/" in p]
    assert len(gets) == 2 and gets[0][1] is None
    # resumed from what it had kept (whole 10 MiB chunks of the 30 MB sent), not from the start
    assert gets[1][1] is not None and gets[1][1].startswith("bytes=")
    assert 0 < int(gets[1][1].removeprefix("bytes=").rstrip("-")) <= 30_000_000
    assert (place / entry(place, "model-q4_1")["sources"]["llama_server"]["path"]).read_bytes() == SMOLLM2.read_bytes()


def test_local_file(hub, place, tmp_path):
    local = tmp_path / "my-model.gguf"
    os.link(SMOLLM2, local)
    done = run(hub, place, "add", str(local), "--alias", "mine")
    assert done.returncode == 0, done.stderr
    got = entry(place, "my-model")
    assert got["sources"]["llama_cpp"] == {"path": str(local)} and got["context_length"] == 8192
    assert Catalog.from_yaml(place / "models.yaml").resolve("MINE") == "my-model"
    taken = run(hub, place, "add", str(local), "--id", "other", "--alias", "smollm2")
    assert taken.returncode == 1 and "'smollm2' is already taken by smollm2-135m-instruct" in taken.stderr
    default = run(hub, place, "remove", "gemma-3-270m")
    assert default.returncode == 1 and "default model" in default.stderr
    assert run(hub, place, "remove", "mine").returncode == 0 and local.exists()  # the user's own file stays


@pytest.mark.skipif(not MLX_GEMMA.is_dir(), reason="run `make models-mlx` first")
def test_add_an_mlx_repository(hub, place):
    """The MLX engine reads a whole repository: every file downloaded, checked and placed; context and
    architecture from its config.json."""
    done = run(hub, place, "add", "mlx-community/gemma-3-270m-8bit", "--engine", "mlx")
    assert done.returncode == 0, done.stderr
    got = entry(place, "gemma-3-270m-8bit")
    src = got["sources"]["mlx"]
    assert src["path"] == "hf/mlx-community/gemma-3-270m-8bit" and src["hf_repo"] == "mlx-community/gemma-3-270m-8bit"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (place / src["path"] / name).read_bytes() == (MLX_GEMMA / name).read_bytes()
    assert src["size"] == sum(f.stat().st_size for f in MLX_GEMMA.iterdir())
    assert got["architecture"] == "gemma3_text" or got["architecture"].startswith("gemma3")
    assert list(got["sources"]) == ["mlx"]


def test_add_a_vllm_repository_records_it_without_downloading_the_weights(hub, place):
    done = run(hub, place, "add", "Qwen/Qwen2.5-0.5B-Instruct", "--engine", "vllm", "--id", "qwen-vllm")
    assert done.returncode == 0, done.stderr
    got = entry(place, "qwen-vllm")
    assert got["sources"] == {
        "vllm": {
            "hf_repo": "Qwen/Qwen2.5-0.5B-Instruct",
            "revision": hub.repos["Qwen/Qwen2.5-0.5B-Instruct"].commit,
            "size": 20_000 + len(QWEN_CONFIG) + len(README),
        }
    }
    assert (got["context_length"], got["architecture"]) == (32768, "qwen2")
    downloads = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]
    assert all(p.endswith("/config.json") for p in downloads), downloads


def test_a_repository_that_is_no_model_is_one_line(hub, place):
    done = run(hub, place, "add", "acme/not-a-model", "--engine", "vllm")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "no config.json" in done.stderr
    mixed = run(hub, place, "add", "Qwen/Qwen2.5-0.5B-Instruct:Q4_K_M", "--engine", "vllm")
    assert mixed.returncode == 1 and "expected OWNER/REPO" in mixed.stderr
