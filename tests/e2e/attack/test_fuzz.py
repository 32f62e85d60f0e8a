"""Schema fuzzing of every route, from the live /openapi.json, through nginx: no 5xx, every 4xx OpenAI's envelope.

Schemathesis generates the cases (its examples, coverage and fuzzing phases; valid and invalid data) for every
operation of the document the stack itself serves, and each is sent with the admin key so every route is
reached. Nothing raises inside a case (a failure would stop that operation's generation to shrink it): each
answer is tallied, and `test_the_fuzzing_found_nothing`, last in the module, prints the counts and fails with
each bad answer as a curl command (a case found so is to be kept as a test of its own). The counts are also
written to run/tests/attack-fuzz.json.

What the test changes, and why (the API's validation is never loosened):
- the document's `model` fields name the stack's models (and one unknown name), so that valid bodies reach the
  queue and the engines instead of all ending in a 404 for a random name;
- a valid-mode body is made to keep the rules its schema cannot say: a chat turn's own rules (valid_turn), and
  an optional field a 400 names is dropped and the case sent again (REPAIRS); each answer is checked;
- an accepted max_tokens (max_completion_tokens, max_output_tokens) above GENERATED is lowered to it: a valid
  large value costs only time on 2 cores, while values the API must refuse (0, negatives, >= the context,
  huge integers, wrong types) are sent as generated;
- load and unload are fuzzed, but a body naming a catalog model is renamed, so that no case changes the fleet.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import falcon.testing
import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import GenerationMode

from services.api.app import create_app
from services.common.catalog import Catalog
from services.common.errors import GatewayTimeout, InternalError, ModelNotFound, ServiceUnavailable
from services.common.settings import Settings
from tests.conftest import RUN_DIR
from tests.e2e.attack.conftest import AttackStack

pytestmark = pytest.mark.e2e

EMBEDDER = "all-minilm-l6-v2"
STACK = {"n_ctx": 256, "default_max_tokens": 2, "max_n": 2, "embedding_model": EMBEDDER, "request_timeout": 120}
"""Generation kept short by settings: a small context, 2 tokens by default, at most 2 choices a request."""
GENERATED = 2
"""Tokens an accepted request generates at most here (see the module's docstring)."""
EXAMPLES = 40
"""Hypothesis examples per operation in the fuzzing phase; the coverage phase adds its own cases."""
MIN_CASES = 1000
TIMEOUT_S = 60
SERVER_TYPES = {kind.type for kind in (InternalError, ServiceUnavailable, GatewayTimeout)}
SERVER_CODES = {kind.code for kind in (InternalError, ServiceUnavailable, GatewayTimeout)}
"""The 5xx kinds of error, as a stream's error event names them once its 200 has gone."""
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
COMMANDS = ("/v1/models/load", "/v1/models/unload")
GENERATE = {"ChatCompletionRequest", "CompletionRequest", "ResponseRequest"}
REQUIRED = {"model", "messages", "prompt", "input"}
"""The required fields of the generating bodies: a 400 naming one of these is not repaired."""
PARAM_HEAD = re.compile(r"^(?P<key>[A-Za-z_]+)(?:\[(?P<index>\d+)\])?")
REPAIRS = 3
"""A valid-mode case the API refuses with a 400 naming an optional field is sent again without it (at most this
often), so that more valid bodies reach the engines: pydantic's cross-field rules are not in the schema."""


@dataclass
class Tally:
    """What every case got back; the last test of the module reads it."""

    cases: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_operation: dict[str, Counter] = field(default_factory=dict)
    refusals: Counter = field(default_factory=Counter)  # status, path and the param an error named
    server_errors: list[str] = field(default_factory=list)
    not_envelopes: list[str] = field(default_factory=list)
    no_answer: list[str] = field(default_factory=list)
    streams: int = 0
    stream_faults: list[str] = field(default_factory=list)  # a 5xx-kind error event after a 200, or no end
    started: float | None = None  # the first case's time: the stack starts after import


TALLY = Tally()


def is_envelope(body: object) -> bool:
    """OpenAI's error envelope: {"error": {"message": str, "type": str, "param": str|null, "code": str|null}}."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return False
    error = body["error"]
    return (
        set(error) >= {"message", "type", "param", "code"}
        and isinstance(error["message"], str)
        and isinstance(error["type"], str)
        and (error["param"] is None or isinstance(error["param"], str))
        and (error["code"] is None or isinstance(error["code"], str))
    )


def events(text: str) -> list[dict]:
    """The JSON data of an event stream's events, in order (`[DONE]` and comments left out)."""
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def stream_faults(text: str) -> list[str]:
    """What a 200 event stream says went wrong on our side: an error event of a 5xx kind (a 5xx that came after
    the headers), an error event not in the envelope, or no end ([DONE], or the Responses API's last event)."""
    data = events(text)
    faults = [f"error event not the envelope: {e}" for e in data if "error" in e and not is_envelope(e)]
    faults += [f"server error event: {e}" for e in data if is_envelope(e) and e["error"]["type"] in SERVER_TYPES]
    faults += [f"server error event: {e}" for e in data if e.get("type") == "error" and e.get("code") in SERVER_CODES]
    responses_end = bool(data) and data[-1].get("type") in ("response.completed", "response.incomplete", "error")
    if not (text.rstrip().endswith("data: [DONE]") or responses_end):
        faults.append("the stream has no end")
    return faults


def stream_error(text: str) -> dict | None:
    """The first error an event stream carries, as {message, type?, param, code}."""
    for e in events(text):
        if "error" in e:
            return e["error"]
        if e.get("type") == "error":
            return e
    return None


def aimed(doc: dict, names: dict[str, list[str]]) -> dict:
    """The document with each body's `model` (and /v1/models/{model_id}) one of `names[schema]` (the path: the
    chat names), among them an unknown one; invalid data (negative mode) still sends anything."""
    out = copy.deepcopy(doc)
    for schema, offered in names.items():
        props = out["components"]["schemas"][schema]["properties"]
        props["model"] = {"enum": offered}
    for param in out["paths"]["/v1/models/{model_id}"]["get"]["parameters"]:
        param["schema"] = {"enum": CHAT_NAMES}
    return out


def without(body: object, param: str | None) -> dict | None:
    """The body less what a 400 named, where that can go: an optional field, or one item of a longer list."""
    head = PARAM_HEAD.match(param or "")
    if not isinstance(body, dict) or head is None or head["key"] not in body:
        return None
    out, key = dict(body), head["key"]
    items = out[key]
    if head["index"] is not None and isinstance(items, list) and int(head["index"]) < len(items) and len(items) > 1:
        out[key] = items[: int(head["index"])] + items[int(head["index"]) + 1 :]
        return out
    if key in REQUIRED:
        return None
    del out[key]
    return out


def tame(case: schemathesis.Case, catalog: Catalog, context: int) -> None:
    """Lower an accepted max_tokens to GENERATED, and rename a catalog model in load/unload (module docstring)."""
    body = case.body
    if not isinstance(body, dict):
        return
    for name in TOKEN_FIELDS:
        value = body.get(name)
        if type(value) is int and GENERATED < value < context:
            body[name] = GENERATED
    if isinstance(body.get("messages"), list) and is_positive(case):
        body["messages"] = [valid_turn(m) for m in body["messages"]]
    model = body.get("model")
    if case.path in COMMANDS and isinstance(model, str) and known(catalog, model):
        body["model"] = f"fuzz-{model}"


def is_positive(case: schemathesis.Case) -> bool:
    return case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE


def valid_turn(message: object) -> object:
    """A chat turn that keeps the per-turn rules the schema cannot say (a tool turn names its call, only an
    assistant turn carries tool_calls, content parts are text), else a valid-mode body is almost never valid."""
    if not isinstance(message, dict):
        return message
    turn = dict(message)
    if turn.get("role") == "tool" and not turn.get("tool_call_id"):
        turn["tool_call_id"] = "call_0"
    if turn.get("role") != "assistant":
        turn.pop("tool_calls", None)
    if isinstance(turn.get("content"), list):
        turn["content"] = [p for p in turn["content"] if isinstance(p, dict) and p.get("type") == "text"
                           and isinstance(p.get("text"), str)]  # fmt: skip
    return turn


def known(catalog: Catalog, name: str) -> bool:
    try:
        catalog.resolve(name)
    except ModelNotFound:
        return False
    return True


def record(case: schemathesis.Case, response: schemathesis.Response | None, auth: dict[str, str], url: str) -> None:
    TALLY.started = TALLY.started or time.monotonic()
    TALLY.cases += 1
    statuses = TALLY.by_operation.setdefault(f"{case.method} {case.path}", Counter())
    curl = case.as_curl_command(headers=auth, base_url=url)
    if response is None:
        statuses["none"] += 1
        TALLY.no_answer.append(curl)
        return
    status = response.status_code
    statuses[str(status)] += 1
    TALLY.by_status[status] += 1
    if status >= 500:
        TALLY.server_errors.append(f"{status} {response.text[:300]!r}\n  {curl}")
    elif status == 200 and any(t.startswith("text/event-stream") for t in response.headers.get("content-type", [])):
        TALLY.streams += 1
        TALLY.stream_faults += [f"200 stream: {fault[:300]}\n  {curl}" for fault in stream_faults(response.text)]
    elif status >= 400:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if is_envelope(body):
            TALLY.refusals[f"{status} {case.path} {body['error']['param'] or body['error']['message'][:60]}"] += 1
        else:
            TALLY.not_envelopes.append(f"{status} {response.text[:300]!r}\n  {curl}")


@pytest.fixture(scope="module")
def catalog(attack: AttackStack) -> Catalog:
    s: Settings = attack.stack.settings
    return Catalog.from_yaml(s.models_file, s.default_model)


def served_document() -> dict:
    """The document as the API builds it (a replica serves the same: test_the_live_document_is_this_one)."""
    s = Settings()
    app = create_app(s, redis.Redis(host="127.0.0.1", port=1), Catalog.from_yaml(s.models_file, s.default_model))
    return falcon.testing.TestClient(app).simulate_get("/openapi.json").json


DOCUMENT = served_document()
CHAT_NAMES = [Settings().default_model, "gemma3-270m", "GPT-4o", EMBEDDER, "no-such-model"]
NAMES = {name: CHAT_NAMES for name in GENERATE}
NAMES["EmbeddingRequest"] = [EMBEDDER, "text-embedding-3-small", CHAT_NAMES[0], "no-such-model"]
# Loaded at import (schemathesis 4.32's from_fixture reads pytest internals that pytest 9 dropped); the live
# document is checked to be the same below, and every case is sent to the live stack's nginx.
schema = schemathesis.openapi.from_dict(aimed(DOCUMENT, NAMES))


def test_the_checks_tell_the_envelope_from_anything_else() -> None:
    """The checks themselves, without a stack: nginx's own pages, bare strings and near-misses are not the envelope."""
    assert is_envelope({"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}})
    assert not is_envelope({"error": "m"})
    assert not is_envelope({"error": {"message": "m", "type": "t", "param": None}})  # no code
    assert not is_envelope({"error": {"message": "m", "type": "t", "param": 3, "code": None}})
    assert not is_envelope({"detail": "Not Found"})
    assert not is_envelope(None)  # an HTML page does not parse as JSON
    assert without({"model": "m", "logit_bias": {"1": 2}}, "logit_bias") == {"model": "m"}
    assert without({"model": "m", "messages": [1, 2]}, "messages[1].content") == {"model": "m", "messages": [1]}
    assert without({"model": "m", "messages": [1]}, "messages[0]") is None  # required, and the only turn
    assert without({"model": "m"}, None) is None
    done = 'data: {"choices":[]}\n\ndata: [DONE]\n\n'
    assert stream_faults(done) == [] and stream_faults('data: {"choices":[]}\n\n') == ["the stream has no end"]
    broke = 'data: {"error":{"message":"m","type":"server_error","param":null,"code":"internal_error"}}\n\ndata: [DONE]'
    assert stream_faults(broke)[0].startswith("server error event")
    gone = 'event: error\ndata: {"type":"error","sequence_number":3,"code":"service_unavailable","message":"m"}\n'
    assert stream_faults(gone)[0].startswith("server error event")
    refused = 'data: {"error":{"message":"m","type":"invalid_request_error","param":"max_tokens","code":null}}\n\n'
    assert stream_faults(refused + "data: [DONE]") == [] and stream_error(refused)["param"] == "max_tokens"


def test_the_live_document_is_this_one(attack: AttackStack) -> None:
    reply = httpx.get(f"{attack.url}/openapi.json", timeout=10)  # public: no key
    assert reply.status_code == 200
    assert reply.json() == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_every_operation(case: schemathesis.Case, attack: AttackStack, catalog: Catalog) -> None:
    tame(case, catalog, attack.stack.settings.n_ctx)
    auth = attack.auth(attack.admin)
    response = send(case, attack.url, auth)
    for _ in range(REPAIRS if is_positive(case) else 0):
        if response is None or response.status_code != 400:
            break
        body = without(case.body, named_param(response))
        if body is None:
            break
        record(case, response, auth, attack.url)
        case.body = body
        response = send(case, attack.url, auth)
    record(case, response, auth, attack.url)


def send(case: schemathesis.Case, url: str, auth: dict[str, str]) -> schemathesis.Response | None:
    try:
        return case.call(base_url=url, headers=auth, timeout=TIMEOUT_S)
    except Exception:  # no answer in time, or a cut connection: a finding like a 5xx
        return None


def named_param(response: schemathesis.Response) -> str | None:
    """The parameter an error envelope names, if any."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body["error"]["param"] if is_envelope(body) else None


LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 20  # about 200 of the 256 tokens of context
BODIES = {
    "/v1/chat/completions": lambda text, n: {"messages": [{"role": "user", "content": text}], "max_tokens": n},
    "/v1/completions": lambda text, n: {"prompt": text, "max_tokens": n},
    "/v1/responses": lambda text, n: {"input": text, "max_output_tokens": n},
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", sorted(BODIES))
def test_the_token_counts_the_fuzzing_lowers_are_answered_as_sent(attack: AttackStack, path: str, stream: bool) -> None:
    """What `tame` keeps from the fuzzing, sent as is: counts the context cannot hold beside a long prompt (a 400
    naming the parameter; in a stream whose 200 went at a quiet tick, an error event naming it), and a longer
    generation than GENERATED from a short one (answered in full)."""
    context = attack.stack.settings.n_ctx
    model = attack.stack.settings.default_model
    for text, n, status in ((LONG_PROMPT, context - 1, 400), (LONG_PROMPT, context // 2, 400), ("Hi", 24, 200)):
        body = BODIES[path](text, n) | {"model": model, "stream": stream}
        reply = httpx.post(f"{attack.url}{path}", json=body, headers=attack.auth(attack.admin), timeout=TIMEOUT_S)
        if stream and reply.status_code == 200:  # the 200 went at a quiet tick, before the worker's answer
            assert not stream_faults(reply.text), reply.text[-300:]
            error = stream_error(reply.text)
            assert (error["param"] if error else None) in (TOKEN_FIELDS if status == 400 else (None,)), reply.text
            continue
        assert reply.status_code == status, (n, reply.text[:300])
        if status == 400:
            assert is_envelope(reply.json()) and reply.json()["error"]["param"] in TOKEN_FIELDS, reply.text


def bad_answers() -> list[str]:
    return TALLY.server_errors + TALLY.stream_faults + TALLY.not_envelopes + TALLY.no_answer


def test_the_fuzzing_found_nothing(attack: AttackStack) -> None:
    """Last in the module: prints the counts (the closing note quotes them), then fails on any bad answer."""
    took = time.monotonic() - (TALLY.started or time.monotonic())
    counts = {
        "cases": TALLY.cases,
        "seconds": round(took),
        "5xx": len(TALLY.server_errors),
        "streams": TALLY.streams,
        "stream_faults": len(TALLY.stream_faults),
        "non_envelope_4xx": len(TALLY.not_envelopes),
        "no_answer": len(TALLY.no_answer),
        "statuses": {str(s): n for s, n in sorted(TALLY.by_status.items())},
        "operations": {op: dict(sorted(n.items())) for op, n in sorted(TALLY.by_operation.items())},
        "refusals": dict(TALLY.refusals.most_common()),
    }
    print("\nfuzzing:", json.dumps(counts, indent=1))
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "attack-fuzz.json").write_text(json.dumps(counts | {"failures": bad_answers()}, indent=1))
    bad = bad_answers()
    assert not bad, "\n".join(bad[:20])
    assert TALLY.cases >= MIN_CASES
    assert attack.serves(attack.stack.settings.default_model), "the fleet is as it was"
