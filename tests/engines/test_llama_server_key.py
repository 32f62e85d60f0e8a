"""The worker's own llama-server, started as `--spawn-llama-server` starts it (sidecar.command, sidecar.supervise),
on the real Gemma model: every route but /health needs the key the worker made, the key is in its environment
and not in its argv (`ps`), no other page's Origin is allowed, and the engine the worker builds with the key
serves. When the sidecar is gone the client is told so in general words, and only the log names its address."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.catalog import Catalog
from services.common.errors import ServiceUnavailable
from services.common.jobs import SamplingParams
from services.common.ports import free_port
from services.common.settings import Settings
from services.common.supervisor import Supervisor
from services.worker import sidecar
from services.worker.engines.base import EngineUnavailable, Finish, GenerationRequest
from services.worker.engines.factory import build_engine
from services.worker.engines.llama_server_process import LlamaServerCommand
from services.worker.engines.openai_http import OpenAIHTTPEngine
from tests.engines.factories.llama_server import binary_or_skip

pytestmark = pytest.mark.engine

EVIL = "http://evil.example"


def small_settings() -> Settings:
    return Settings(
        llama_server_port=free_port(), llama_server_parallel=2, n_ctx=1024, n_threads=2, llama_server_nice=0
    )


@contextlib.contextmanager
def worker_s_llama_server(settings: Settings, log: Path) -> Iterator[tuple[LlamaServerCommand, Supervisor]]:
    cmd = sidecar.command(settings, Catalog.from_yaml(settings.models_file, settings.default_model))
    sup = sidecar.supervise(
        cmd, log_path=log, on_up=lambda: None, on_down=lambda _reason: None, binary=str(binary_or_skip())
    )
    sup.start()
    try:
        assert sup.wait_ready(90), log.read_text()[-2000:]
        yield cmd, sup
    finally:
        sup.stop()


@pytest.fixture(scope="module")
def settings() -> Settings:
    return small_settings()


@pytest.fixture(scope="module")
def server(
    gemma_path: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LlamaServerCommand, Supervisor]]:
    with worker_s_llama_server(settings, tmp_path_factory.mktemp("keyed") / "llama-server.log") as running:
        yield running


def engine_with_key(settings: Settings, cmd: LlamaServerCommand) -> OpenAIHTTPEngine:
    keyed = settings.model_copy(update={"llama_server_api_key": cmd.api_key})  # as the worker's main() does
    engine = build_engine(
        "llama_server", settings.default_model, catalog=Catalog.from_yaml(settings.models_file, settings.default_model),
        settings=keyed, slots=2, upstream_url=cmd.url,
    )  # fmt: skip
    assert isinstance(engine, OpenAIHTTPEngine)
    return engine


def generate(engine: OpenAIHTTPEngine) -> list[object]:
    request = GenerationRequest("t", "Once upon a time", SamplingParams(max_tokens=4, temperature=0.0))
    return list(engine.generate(request, lambda: False))


def test_every_route_but_health_needs_the_key(server: tuple[LlamaServerCommand, Supervisor]) -> None:
    cmd, _ = server
    assert len(cmd.api_key) >= 32
    bearer = {"Authorization": f"Bearer {cmd.api_key}"}
    assert httpx.get(f"{cmd.url}/health").status_code == 200
    assert httpx.get(f"{cmd.url}/v1/models", headers=bearer).status_code == 200
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": cmd.api_key[:-1]}):
        assert httpx.get(f"{cmd.url}/v1/models", headers=headers).status_code == 401, headers
        assert httpx.get(f"{cmd.url}/metrics", headers=headers).status_code == 401, headers
        assert httpx.get(f"{cmd.url}/props", headers=headers).status_code == 401, headers
        answer = httpx.post(f"{cmd.url}/v1/chat/completions", json=chat, headers=headers, timeout=30)
        assert answer.status_code == 401, headers
        assert httpx.post(f"{cmd.url}/completion", json={"prompt": "a"}, headers=headers).status_code == 401


def test_the_key_is_in_its_environment_not_its_argv(server: tuple[LlamaServerCommand, Supervisor]) -> None:
    cmd, sup = server
    proc = Path(f"/proc/{sup.pid}")
    assert cmd.api_key.encode() not in (proc / "cmdline").read_bytes()
    assert f"LLAMA_API_KEY={cmd.api_key}".encode() in (proc / "environ").read_bytes().split(b"\0")
    assert cmd.api_key not in repr(cmd)


def test_no_other_page_s_origin_is_allowed(server: tuple[LlamaServerCommand, Supervisor]) -> None:
    cmd, _ = server
    bearer = {"Authorization": f"Bearer {cmd.api_key}"}
    plain = httpx.get(f"{cmd.url}/v1/models", headers=bearer | {"Origin": EVIL})
    asks = {"Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    preflight = httpx.options(f"{cmd.url}/v1/chat/completions", headers=asks)
    for answer in (plain, preflight):
        assert answer.headers.get("access-control-allow-origin") in (None, cmd.url), answer.headers
        assert answer.headers.get("access-control-allow-credentials") != "true", answer.headers


def test_the_worker_s_engine_sends_the_key(settings: Settings, server: tuple[LlamaServerCommand, Supervisor]) -> None:
    cmd, _ = server
    engine = engine_with_key(settings, cmd)
    engine.load()
    try:
        items = generate(engine)
        assert isinstance(items[-1], Finish) and items[-1].completion_tokens > 0
        assert engine.count_tokens("Once upon a time") > 0  # a plain JSON call sends it too
    finally:
        engine.unload()
    keyless = OpenAIHTTPEngine(cmd.url, name="llama_server", concurrency=1, context=512, timeout=10)
    with pytest.raises(EngineUnavailable):
        keyless.load()


def test_a_gone_sidecar_is_not_named_to_the_client(
    gemma_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's message names neither the address nor the port; the worker's log names both."""
    settings = small_settings()
    with worker_s_llama_server(settings, tmp_path / "llama-server.log") as (cmd, sup):
        engine = engine_with_key(settings, cmd)
        engine.load()
        sup.stop()
    caplog.set_level(logging.WARNING)
    try:
        with pytest.raises(ServiceUnavailable) as raised:
            generate(engine)
    finally:
        engine.unload()
    message = raised.value.message
    assert "127.0.0.1" not in message and str(cmd.port) not in message and "http" not in message, message
    assert "retry" in message
    assert f"127.0.0.1:{cmd.port}" in caplog.text
