"""The native stack's embedding worker: started where its weights and llama-server are, with its own port."""

from __future__ import annotations

from pathlib import Path

from tests.support import stack_procs as support
from tests.support.stack_procs import BINARY


def stack_procs(tmp_path: Path, binary: Path | None = BINARY, *, weights: bool = True, **changes) -> dict:
    made = ("all-minilm-l6-v2-f16.gguf",) if weights else ()
    return support.stack_procs(tmp_path, binary, weights=made, embedding_server_port=8299, **changes)


def test_the_embedder_runs_beside_the_worker(tmp_path: Path) -> None:
    procs = stack_procs(tmp_path)
    own = [name for name in procs if not name.endswith("-exporter")]  # Redis's and nginx's, where installed
    assert own == ["redis", "api-1", "api-2", "worker", "embedder", "nginx", "prometheus"]
    argv = " ".join(procs["embedder"].argv)
    assert "--model all-minilm-l6-v2 " in argv and "--engine llama_server " in argv
    assert "--spawn-llama-server" in argv and "services.stack.respawn embedder" in argv
    assert procs["embedder"].env["LLAMA_SERVER_PORT"] == "8299" != procs["worker"].env["LLAMA_SERVER_PORT"]


def test_no_embedder_without_the_setting_the_weights_or_llama_server(tmp_path: Path) -> None:
    assert "embedder" not in stack_procs(tmp_path, embedding_model="")
    assert "embedder" not in stack_procs(tmp_path, binary=None)
    (tmp_path / "bare").mkdir()
    assert "embedder" not in stack_procs(tmp_path / "bare", weights=False)


def test_compose_runs_the_embedder_beside_the_default_engine() -> None:
    from tests.unit.test_compose_files import resolved

    services = resolved()["services"]
    server = " ".join(services["llama-server-embed"]["command"])
    # its llama-server command is made from models.yaml in the container; test_compose_files checks that it
    # names the GGUF and --embeddings (llama_server_container --print)
    assert "services.worker.llama_server_container --model all-minilm-l6-v2" in server
    worker = " ".join(services["worker-embed"]["command"])
    assert "--upstream-url http://llama-server-embed:8080 --model all-minilm-l6-v2" in worker
    assert services["worker-embed"]["depends_on"]["llama-server-embed"]["condition"] == "service_healthy"
