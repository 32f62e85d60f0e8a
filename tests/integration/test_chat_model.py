"""Where a request naming an OpenAI model goes, through the real app and Redis: a chat to CHAT_MODEL while a
worker serves it and the key may use it, a completion and a model named by its own id as the catalog says.

A thread stands in for the workers: it takes each job from whichever model's queue it was put on and answers
it, so the test sees both the queue the API chose and the `model` the client is told."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import falcon.testing
import pytest
import redis
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from services.api.app import create_app
from services.common import keys
from services.common.catalog import Catalog
from services.common.events import Delta, Done, Started, Usage
from services.common.jobs import Job
from services.common.registry import Registry, WorkerRecord
from services.common.settings import ROOT, Settings
from services.keys import store
from services.worker.publisher import StreamPublisher

pytestmark = pytest.mark.integration
GEMMA, SMOLLM2 = "gemma-3-270m", "smollm2-135m-instruct"
CHAT = {"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 4}


def answer_jobs(client: redis.Redis, taken: list[str], stop: threading.Event) -> None:
    """Each job from either model's queue answered with one delta; `taken` records the queue's model."""
    queues = {"rq:queue:" + keys.queue_name(m): m for m in (GEMMA, SMOLLM2)}
    while not stop.is_set():
        got = client.blpop(list(queues), 1)
        if not got:
            continue
        taken.append(queues[got[0].decode()])
        job = Job.from_wire(RQJob.fetch(got[1].decode(), connection=client, serializer=JSONSerializer).args[0])
        out = StreamPublisher(client, job.request_id, 60, job.deadline)
        out.publish(Started("w1", time.time()))
        out.publish(Delta("red", 1))
        out.publish(Done("stop", Usage(3, 1)))


class Api:
    def __init__(self, client: falcon.testing.TestClient, taken: list[str]) -> None:
        self.client, self.taken = client, taken

    def post(self, route: str, body: dict, key: str | None = None) -> tuple[str, str]:
        """(the model the answer names, the model whose queue the job was put on)."""
        before = len(self.taken)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        got = self.client.simulate_post(route, json=body, headers=headers, remote_addr="127.0.0.1")
        assert got.status_code == 200, got.text
        assert len(self.taken) == before + 1
        return got.json["model"], self.taken[-1]

    def chat(self, model: str, key: str | None = None) -> tuple[str, str]:
        return self.post("/v1/chat/completions", {"model": model, **CHAT}, key)


def serve(client: redis.Redis, *models: str) -> None:
    for model in models:
        record = WorkerRecord(id=f"w-{model}", host="h", pid=1, engine="llama_server", device="cpu", models=(model,),
                              slots=1, busy=0, started_at=time.time())  # fmt: skip
        Registry(client, ttl=60).beat(record)


@pytest.fixture()
def redis_client(quiet_redis_client):
    """Database 1: the session-long worker of tests/e2e/api serves the default model on database 0 and would
    take these jobs."""
    return quiet_redis_client


@pytest.fixture()
def api_for(redis_client, quiet_redis_url) -> Iterator:
    redis_url = quiet_redis_url
    stop = threading.Event()
    taken: list[str] = []
    thread = threading.Thread(target=answer_jobs, args=(redis.Redis.from_url(redis_url), taken, stop), daemon=True)
    thread.start()

    def make(**changes: object) -> Api:
        settings = Settings(redis_url=redis_url, request_timeout=10, **changes)  # type: ignore[arg-type]
        catalog = Catalog.from_yaml(ROOT / "models" / "models.yaml", settings.default_model)
        return Api(falcon.testing.TestClient(create_app(settings, redis_client, catalog)), taken)

    yield make
    stop.set()
    thread.join(5)


def test_a_chat_naming_an_openai_model_is_answered_by_the_chat_model(api_for, redis_client) -> None:
    serve(redis_client, GEMMA, SMOLLM2)
    api = api_for()
    for name in ("gpt-3.5-turbo", "gpt-4o", "GPT-4"):
        assert api.chat(name) == (SMOLLM2, SMOLLM2), name
    body = {"model": "gpt-4o", "input": "Name three colors.", "max_output_tokens": 4}
    assert api.post("/v1/responses", body) == (SMOLLM2, SMOLLM2)


def test_completions_and_models_named_by_their_own_names_keep_to_the_catalog(api_for, redis_client) -> None:
    serve(redis_client, GEMMA, SMOLLM2)
    api = api_for()
    for name in ("text-davinci-003", "gpt-3.5-turbo-instruct", "gpt-3.5-turbo", GEMMA):
        assert api.post("/v1/completions", {"model": name, "prompt": "Red, green,", "max_tokens": 4}) == (GEMMA, GEMMA)
    assert api.chat(GEMMA) == (GEMMA, GEMMA) and api.chat("gemma3-270m") == (GEMMA, GEMMA)
    assert api.chat("smollm2") == (SMOLLM2, SMOLLM2)


def test_without_the_chat_model_served_or_set_a_chat_stays_on_the_default(api_for, redis_client) -> None:
    serve(redis_client, GEMMA)
    assert api_for().chat("gpt-3.5-turbo") == (GEMMA, GEMMA), "no worker serves it: the default, not a 503"
    serve(redis_client, SMOLLM2)
    assert api_for(chat_model="").chat("gpt-3.5-turbo") == (GEMMA, GEMMA)
    assert api_for(chat_model="no-such-model").chat("gpt-3.5-turbo") == (GEMMA, GEMMA)
    assert api_for(chat_model="smollm2").chat("gpt-3.5-turbo") == (SMOLLM2, SMOLLM2), "an alias names it too"


def test_a_key_that_may_not_use_the_chat_model_chats_with_the_default(api_for, redis_client, tmp_path) -> None:
    serve(redis_client, GEMMA, SMOLLM2)
    path = tmp_path / "keys.json"
    base_only = store.create(path, "base-only", models=(GEMMA,))
    anyone = store.create(path, "anyone")
    api = api_for(api_keys_file=path)
    assert api.chat("gpt-3.5-turbo", base_only) == (GEMMA, GEMMA)
    assert api.chat("gpt-3.5-turbo", anyone) == (SMOLLM2, SMOLLM2)
