"""Per-key limits' pure parts: the token estimate, OpenAI's reset spelling, the sliding window's wait, the
limits in force for a key, and the CLI that sets them."""

from __future__ import annotations

import time

import pytest

from services.api.limits.key_limits import KeyLimits
from services.api.limits.ratelimit import _wait_for, duration, estimate_tokens
from services.common.jobs import ChatMessage, Job, SamplingParams
from services.common.settings import Settings
from services.keys import __main__ as cli
from services.keys import store


def job(**fields) -> Job:
    now = time.time()
    fields.setdefault("params", SamplingParams(max_tokens=50))
    return Job(request_id="r", model="m", accepted_at=now, deadline=now + 9, **fields)


def test_the_estimate_is_prompt_characters_over_four_plus_max_tokens():
    assert estimate_tokens(job(kind="completion", prompt="x" * 40)) == 10 + 50
    chat = job(kind="chat", messages=(ChatMessage(role="user", content="y" * 20),) * 2)
    assert estimate_tokens(chat) == 2 * (5 + 4) + 50, "each message's text and its template tokens"


def test_tools_response_formats_and_calls_count_as_prompt():
    tools = ({"type": "function", "function": {"name": "f", "parameters": {"description": "z" * 4000}}},)
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"description": "z" * 2000}}}
    plain = estimate_tokens(job(kind="chat", messages=(ChatMessage(role="user", content="hi"),)))
    with_tools = estimate_tokens(job(kind="chat", messages=(ChatMessage(role="user", content="hi"),),
                                     params=SamplingParams(max_tokens=50, tools=tools)))  # fmt: skip
    assert with_tools - plain >= 1000, "4,000 characters of schema are ~1,000 tokens"
    with_format = estimate_tokens(job(kind="completion", prompt="hi",
                                      params=SamplingParams(max_tokens=50, response_format=fmt)))  # fmt: skip
    assert with_format - estimate_tokens(job(kind="completion", prompt="hi")) >= 500
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "a" * 4000}}
    turns = (ChatMessage(role="assistant", content="", tool_calls=(call,)),)
    assert estimate_tokens(job(kind="chat", messages=turns)) - 50 >= 1000, "a call's arguments are prompt too"


def test_reset_times_are_spelled_as_openai_does():
    assert [duration(s) for s in (0, 0.02, 1.5, 6, 59.96, 60, 361)] == [
        "0ms",
        "20ms",
        "1.5s",
        "6s",
        "60s",
        "1m0s",
        "6m1s",
    ]


def test_the_wait_until_a_cost_fits_a_sliding_window_counter():
    assert _wait_for(10, 100, prev=0, prev_ttl=0, cur=50, cur_ttl=100, expiry=60) == 0, "it fits now"
    # previous minute's 60 weigh 60 * 30/60 = 30; 10 more fit once they weigh 100 - 10 - 70 = 20: 10 s on
    assert _wait_for(10, 100, prev=60, prev_ttl=30, cur=70, cur_ttl=110, expiry=60) == pytest.approx(10)
    # the current window alone is too full: it must become the previous one (50 s) and decay to 90 of 95
    assert _wait_for(10, 100, prev=0, prev_ttl=0, cur=95, cur_ttl=110, expiry=60) == pytest.approx(50 + 60 * 5 / 95)


def test_a_key_without_limits_takes_the_defaults_and_zero_is_unlimited():
    key = store.ApiKey(name="k", sha256="0" * 64, shown="sk-x", rpm=5, priority=3)
    assert KeyLimits.of(key, Settings()) == KeyLimits(name="k", rpm=5, tpm=0, concurrency=0, priority=3)
    defaults = Settings(key_default_rpm=60, key_default_tpm=1000, key_default_concurrency=2)
    assert KeyLimits.of(key, defaults) == KeyLimits(name="k", rpm=5, tpm=1000, concurrency=2, priority=3)


def test_cli_creates_and_sets_limits_and_priority(tmp_path, capsys):
    path = tmp_path / "keys.json"
    assert cli.main(["--file", str(path), "create", "team", "--rpm", "60", "--tpm", "9000", "--priority", "2"]) == 0
    key = capsys.readouterr().out.strip()
    record = store.read(path).named("team")
    assert (record.rpm, record.tpm, record.concurrency, record.priority) == (60, 9000, None, 2)
    assert cli.main(["--file", str(path), "set", "team", "--concurrency", "4", "--rpm", "0"]) == 0
    assert "concurrency=4" in capsys.readouterr().out
    record = store.read(path).named("team")
    assert (record.rpm, record.tpm, record.concurrency, record.priority) == (None, 9000, 4, 2), "0: the default"
    assert record.sha256 == store.digest(key), "the key itself stays"
    assert cli.main(["--file", str(path), "list"]) == 0
    assert "tpm=9000\tconcurrency=4\tpriority=2" in capsys.readouterr().out
    assert cli.main(["--file", str(path), "set", "team", "--priority", "0"]) == 1, "priority is 1 to 100"
    assert cli.main(["--file", str(path), "set", "nobody", "--rpm", "1"]) == 1
