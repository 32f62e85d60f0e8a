"""The sidecar wire format's pure parts: SSE parsing and error mapping, in both servers' shapes.

The llama-server shapes are also exercised live in tests/engines; vLLM's are written down here from
its OpenAI server so the mapping is checked even where no GPU runs vLLM.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.common.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable
from services.worker.engines.base import ContextLengthExceeded, EngineError
from services.worker.engines.llama_server_process import LlamaServerCommand
from services.worker.engines.upstream import error_from_body, error_from_socket, error_from_transport, sse_events


def test_sse_skips_pings_and_other_fields_and_stops_at_done():
    lines = [":", "", 'data: {"a": 1}', "event: x", 'data:{"b": 2}', "data: [DONE]", 'data: {"c": 3}']
    assert list(sse_events(lines)) == [{"a": 1}, {"b": 2}]


def test_malformed_event_is_an_engine_error():
    with pytest.raises(EngineError, match="malformed"):
        list(sse_events(["data: {not json"]))


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"error": {"code": 400, "message": "bad", "type": "invalid_request_error"}}, InvalidRequest),
        (
            400,
            {"error": {"code": 400, "message": "too long", "type": "exceed_context_size_error", "n_ctx": 512}},
            ContextLengthExceeded,
        ),
        (
            400,
            {"object": "error", "message": "This model's maximum context length is 2048 tokens.", "code": 400},
            ContextLengthExceeded,
        ),
        (422, {"detail": "unprocessable"}, InvalidRequest),
        (413, "payload too large", PayloadTooLarge),
        (503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, ServiceUnavailable),
        (429, {"error": {"message": "busy"}}, ServiceUnavailable),
        (500, {"error": {"message": "boom"}}, EngineError),
        (401, {"error": {"message": "Invalid API Key"}}, EngineError),
    ],
)
def test_upstream_errors_map_to_our_classes(status, body, expected):
    err = error_from_body(status, body, "llama_server")
    assert type(err) is expected
    assert err.message


def test_client_mistakes_keep_the_upstream_message():
    err = error_from_body(400, {"error": {"message": "'prompt' is required", "param": "prompt"}}, "vllm")
    assert (err.status, err.message, err.param) == (400, "'prompt' is required", "prompt")


def test_transport_failures_are_503_when_unreachable_500_otherwise():
    request = httpx.Request("GET", "http://127.0.0.1:1/health")
    assert type(error_from_transport(httpx.ConnectError("refused", request=request), "vllm", "u")) is ServiceUnavailable
    assert type(error_from_transport(httpx.ReadTimeout("slow", request=request), "vllm", "u")) is EngineError
    assert type(error_from_transport(httpx.RemoteProtocolError("cut", request=request), "vllm", "u")) is EngineError


def test_transport_failures_tell_the_client_nothing_of_the_sidecar_s_address(caplog: pytest.LogCaptureFixture):
    """Clients got 'llama_server at http://127.0.0.1:PORT is unreachable: [Errno 111] ...': the address is for
    the log alone."""
    url = "http://127.0.0.1:18180"
    request = httpx.Request("POST", f"{url}/v1/chat/completions")
    failures = [
        error_from_transport(httpx.ConnectError("[Errno 111] refused", request=request), "llama_server", url),
        error_from_transport(httpx.ReadTimeout(f"timed out reading {url}", request=request), "llama_server", url),
        error_from_transport(httpx.RemoteProtocolError(f"{url} cut", request=request), "llama_server", url),
        error_from_socket(ConnectionRefusedError(111, "Connection refused"), "llama_server", url),
        error_from_socket(TimeoutError(), "llama_server", url),
        error_from_socket(ConnectionResetError(104, "reset"), "llama_server", url),
    ]
    for err in failures:
        assert "127.0.0.1" not in err.message and "18180" not in err.message and "Errno" not in err.message, err
    assert "retry" in failures[0].message and type(failures[3]) is ServiceUnavailable
    assert len(caplog.records) == len(failures) and all(url in r.getMessage() for r in caplog.records)


def test_llama_server_command_splits_context_over_slots_and_names_the_template():
    cmd = LlamaServerCommand(Path("m.gguf"), 8080, slots=4, slot_context=2048, threads=2, chat_template="gemma")
    argv = cmd.argv("/bin/llama-server")
    assert argv[0] == "/bin/llama-server"
    assert argv[argv.index("--ctx-size") + 1] == "8192" and argv[argv.index("--parallel") + 1] == "4"
    assert argv.index("--no-jinja") < argv.index("--chat-template")
    assert "--metrics" in argv and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert cmd.url == "http://127.0.0.1:8080"
    niced = LlamaServerCommand(Path("m.gguf"), 8080, nice=10).argv("/bin/llama-server")
    assert (
        niced[:4] == ["nice", "-n", "10", "/bin/llama-server"]
        and niced[4:] == LlamaServerCommand(Path("m.gguf"), 8080).argv("/bin/llama-server")[1:]
    )
