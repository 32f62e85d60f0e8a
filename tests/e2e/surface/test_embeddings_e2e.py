"""/v1/embeddings through nginx, the API replicas, Redis and the embedding worker, driven by the openai SDK,
LangChain's OpenAIEmbeddings and plain HTTP."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.surface.conftest import EMBEDDER
from tests.support.native_stack import NativeStack

pytestmark = pytest.mark.e2e
TEXTS = ["The cat sat on the mat.", "A feline rested on the rug.", "Stock markets fell sharply today."]


def test_sdk_float_and_base64_agree(client: openai.OpenAI) -> None:
    as_float = client.embeddings.create(model=EMBEDDER, input=TEXTS, encoding_format="float")
    by_default = client.embeddings.create(model=EMBEDDER, input=TEXTS)  # the SDK asks for base64 and decodes it
    assert as_float.object == "list" and as_float.model == EMBEDDER
    assert [d.index for d in as_float.data] == [0, 1, 2]
    a = np.array([d.embedding for d in as_float.data])
    b = np.array([d.embedding for d in by_default.data])
    assert a.shape == (3, 384)
    assert np.array_equal(a, b)  # the same float32 values either way
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3)
    assert a[0] @ a[1] > a[0] @ a[2] + 0.3
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > 3 * 5


def test_base64_on_the_wire_is_little_endian_float32(stack: NativeStack) -> None:
    r = httpx.post(
        f"{stack.url}/v1/embeddings",
        json={"model": EMBEDDER, "input": TEXTS[0], "encoding_format": "base64"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    packed = body["data"][0]["embedding"]
    assert isinstance(packed, str)
    floats = httpx.post(f"{stack.url}/v1/embeddings", json={"model": EMBEDDER, "input": TEXTS[0]}, timeout=60).json()
    assert np.frombuffer(base64.b64decode(packed), dtype="<f4").tolist() == floats["data"][0]["embedding"]
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["data"][0]["object"] == "embedding"


def test_token_id_arrays_are_inputs_too(client: openai.OpenAI) -> None:
    # [CLS] the cat sat on the mat . [SEP] in all-MiniLM-L6-v2's vocabulary
    ids = [101, 1996, 4937, 2938, 2006, 1996, 13523, 1012, 102]
    by_ids = client.embeddings.create(model=EMBEDDER, input=[ids], encoding_format="float")
    by_text = client.embeddings.create(model=EMBEDDER, input=TEXTS[0], encoding_format="float")
    assert by_ids.usage.prompt_tokens == len(ids)
    assert float(np.dot(by_ids.data[0].embedding, by_text.data[0].embedding)) > 0.99


def test_langchain_openai_embeddings(stack: NativeStack) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: send texts, not tiktoken ids (they are OpenAI's vocabulary, not the model's)
    emb = OpenAIEmbeddings(
        model=EMBEDDER, base_url=f"{stack.url}/v1", api_key="unused", check_embedding_ctx_length=False
    )
    docs = np.array(emb.embed_documents(TEXTS))
    query = np.array(emb.embed_query("Where did the cat sit?"))
    assert docs.shape == (3, 384) and query.shape == (384,)
    scores = docs @ query
    assert int(np.argmax(scores)) in (0, 1) and scores[2] < max(scores[0], scores[1])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": EMBEDDER, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ("/v1/completions", {"model": EMBEDDER, "prompt": "hi"}, "model"),
        ("/v1/responses", {"model": EMBEDDER, "input": "hi"}, "model"),
        ("/v1/embeddings", {"model": "gemma-3-270m", "input": "hi"}, "model"),
        ("/v1/embeddings", {"model": EMBEDDER, "input": "hi", "dimensions": 128}, "dimensions"),
        ("/v1/embeddings", {"model": EMBEDDER, "input": ""}, "input"),
        ("/v1/embeddings", {"model": EMBEDDER, "input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ("/v1/embeddings", {"model": EMBEDDER, "input": "word " * 800}, "input"),
    ],
)
def test_wrong_model_kind_and_bad_inputs_are_400(stack: NativeStack, path: str, body: dict, param: str) -> None:
    r = httpx.post(f"{stack.url}{path}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_sdk_raises_bad_request_for_a_chat_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="gemma-3-270m", input="hi")
    assert info.value.body["code"] == "model_not_supported"
