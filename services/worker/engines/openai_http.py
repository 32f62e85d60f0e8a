"""An engine that streams from an OpenAI-compatible sidecar: llama.cpp's `llama-server` or `vllm serve`.

The sidecar batches requests itself, so this class only has to keep `concurrency` streams open at
once (kept-alive connections, sse_client.SSEClient) and translate: our request to its JSON, its SSE
chunks to TokenChunks, its usage to one Finish, its errors to APIErrors. Closing a stream early is
how a cancelled request frees the sidecar's slot: both servers stop generating on disconnect.

One HTTP call per request: a chat goes to the sidecar's chat endpoint, which templates it (no
/apply-template first), and the prompt's size comes back with the first token (no /tokenize first);
context limits are checked there (upstream.CompletionStream), or by the sidecar itself.

Where the two sidecars differ (routes, context, field names, who enforces a forced tool choice, who
echoes), the engine reads its profile (profiles.py), looked up once from its name when it is built.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from services.common import tracing
from services.common.errors import APIError, InvalidRequest
from services.common.jobs import ChatMessage, SamplingParams
from services.worker.engines import echo, features, payload, token_ids
from services.worker.engines.base import (
    CancelCheck,
    ContextLengthExceeded,
    Embeddings,
    EngineError,
    EngineUnavailable,
    GenerationItem,
    GenerationRequest,
)
from services.worker.engines.forced_tools import ForcedTools
from services.worker.engines.profiles import SidecarProfile, profile_for
from services.worker.engines.sse_client import SSEClient, StreamLines
from services.worker.engines.upstream import (
    CompletionStream,
    error_from_response,
    error_from_transport,
    sse_events,
)

log = logging.getLogger(__name__)

RETRIES = 3
"""Attempts of an idempotent call (tokenize, template, props) when a pooled connection turns out dead."""

LOAD_WAIT = 120.0
"""Seconds load() waits for a sidecar that answers but is still loading its model (503 on /health)."""

CONNECT_WAIT = 20.0
"""Seconds load() waits for a sidecar that does not listen yet: started beside us, it binds its port
within a second or two; past this the next engine in the fallback order gets its turn."""


class OpenAIHTTPEngine:
    """A sidecar behind the Engine protocol; `name` is "llama_server" or "vllm", whose differences its profile
    says (profiles.PROFILES); the name itself only labels logs and errors."""

    templates_chat = True
    calls_before_wait = True
    _vocab: int | None = None
    """The sidecar model's vocabulary size (0: it does not say), asked the first time token ids come."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        concurrency: int,
        context: int,
        timeout: float,
        upstream_model: str | None = None,
        read_tick: float = 0.0,
        api_key: str = "",
        accepts: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.profile: SidecarProfile = profile_for(name)
        self.read_tick = read_tick
        """Seconds between the reads of a stream that flows (sse_client); 0 reads every event as it comes."""
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.concurrency = concurrency
        self.context = context
        self.timeout = timeout
        self.upstream_model = upstream_model
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        """Sent on every call: the worker's own llama-server wants the key it was started with."""
        self.accepts = accepts
        """Names the sidecar's model may go by (the catalog id, its aliases, its file or repo): load() refuses a
        sidecar serving anything else, which would otherwise be advertised under this model's id."""
        self._client: httpx.Client | None = None
        self._streams: SSEClient | None = None

    # lifecycle -----------------------------------------------------------------------------------

    def load(self) -> None:
        """Connect, wait out a sidecar still loading its model, learn its model id and context."""
        client = httpx.Client(
            base_url=self.base_url,
            headers=self._auth,
            timeout=httpx.Timeout(self.timeout, connect=5.0),
            limits=httpx.Limits(
                max_connections=self.concurrency * 2 + 8, max_keepalive_connections=self.concurrency + 4
            ),
        )
        try:
            self._wait_ready(client)
            models = client.get("/v1/models").json().get("data") or []
        except (httpx.HTTPError, ValueError) as exc:
            client.close()
            raise EngineUnavailable(f"{self.name} at {self.base_url} does not answer: {exc}") from exc
        if not models:
            client.close()
            raise EngineUnavailable(f"{self.name} at {self.base_url} serves no model")
        model = self._ours(models)
        if model is None:
            client.close()
            served = ", ".join(str(m.get("id")) for m in models)
            raise EngineUnavailable(f"{self.name} serves {served}, not {self.accepts[0]}")
        self._client = client
        self._streams = SSEClient(
            self.base_url,
            upstream=self.name,
            timeout=self.timeout,
            keep=self.concurrency + 4,
            tick=self.read_tick,
            headers=self._auth,
        )
        self.upstream_model = self.upstream_model or model["id"]
        upstream_ctx = self._upstream_context(model)
        if upstream_ctx and upstream_ctx < self.context:
            log.warning(
                "%s allows %d tokens per request, not %d: using its limit", self.name, upstream_ctx, self.context
            )
            self.context = upstream_ctx
        log.info(
            "%s at %s serves %s: %d concurrent, context %d",
            self.name,
            self.base_url,
            self.upstream_model,
            self.concurrency,
            self.context,
        )

    def _ours(self, models: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The sidecar's model that is the one we were built for (any, when we were not told which)."""
        if not self.accepts:
            return models[0]
        names = {n.lower() for n in self.accepts}
        for model in models:
            ident = str(model.get("id", ""))
            if ident.lower() in names or ident.rsplit("/", 1)[-1].lower() in names:
                return model
        return None

    def _wait_ready(self, client: httpx.Client) -> None:
        """A sidecar started beside us (the launcher starts every process at once) may not listen yet, or
        still load its model (503): both are waited out (CONNECT_WAIT, LOAD_WAIT); any other answer is final."""
        started = time.monotonic()
        deadline = started + LOAD_WAIT
        while True:
            try:
                status = client.get("/health").status_code
            except httpx.TransportError:
                if time.monotonic() > started + CONNECT_WAIT:
                    raise
                time.sleep(0.5)
                continue
            if status == 200:
                return
            if status != 503 or time.monotonic() > deadline:
                raise EngineUnavailable(f"{self.name} at {self.base_url}: /health answered {status}")
            time.sleep(0.5)

    def _upstream_context(self, model: dict[str, Any]) -> int | None:
        """Tokens one request may use upstream: vLLM's max_model_len, llama-server's per-slot n_ctx."""
        if "max_model_len" in model:
            return int(model["max_model_len"])
        route = self.profile.context_route
        if route is None:
            return None
        try:
            props = self._json("GET", route)
        except APIError as exc:
            log.warning("%s: no %s (%s); trusting the configured context", self.name, route, exc.message)
            return None
        n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
        return int(n_ctx) if n_ctx else None

    def unload(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._streams is not None:
            self._streams.close()
            self._streams = None

    def capacity(self) -> int:
        return self.concurrency

    def context_length(self) -> int:
        return self.context

    # tokens and templates ------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` alone (no BOS added), like the in-process engine counts them."""
        return self._tokenize(text, add_special=False)

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> str:
        """llama-server renders its template for us; vLLM has no such endpoint, so "" (it templates upstream)."""
        route = self.profile.template_route
        if route is None:
            return ""
        return self._json("POST", route, {"messages": payload.messages(messages)})["prompt"]

    def _tokenize(self, text: str, *, add_special: bool) -> int:
        body = self.profile.tokenize_body(text, self.upstream_model, add_special)
        return len(self._json("POST", "/tokenize", body)["tokens"])

    # generation ----------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, cancelled: CancelCheck) -> Iterator[GenerationItem]:
        p = request.params
        features.require(p, self.name, self.profile.supports)
        if p.max_tokens_explicit and p.max_tokens >= self.context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{p.max_tokens} tokens for the completion alone. Please reduce max_tokens.",
                param="max_tokens",
            )
        max_tokens = p.max_tokens if p.max_tokens_explicit else min(p.max_tokens, self.context)
        forced = None if self.profile.enforces_tool_choice else ForcedTools.of(p)
        items = self._generate(request, max_tokens, cancelled, forced)
        if forced is not None:
            items = forced.translate(items)
        if not self.profile.echoes:  # the prompt is known, so its text is echoed here
            items = echo.text_only(request, items)
        yield from items

    def _generate(
        self, request: GenerationRequest, max_tokens: int, cancelled: CancelCheck, forced: ForcedTools | None
    ) -> Iterator[GenerationItem]:
        p = request.params
        path = "/v1/chat/completions" if request.messages else "/v1/completions"
        body = payload.body(request, max_tokens, self.profile, self.upstream_model, forced)
        infill = self.profile.infill_route if p.suffix and not request.messages else None  # fill-in-the-middle
        if infill:
            if p.logprobs:  # /infill answers its native probabilities, not OpenAI's logprobs
                raise InvalidRequest("logprobs cannot be combined with suffix on this engine.", param="logprobs")
            path, body = infill, payload.infill_body(body, p.suffix)
        explicit = p.max_tokens_explicit
        stream = CompletionStream(self.name, context=self.context, max_tokens=max_tokens, explicit=explicit)
        opened = False
        try:
            with self._open_stream(path, body, request.before_wait) as lines:
                opened = True
                yield from self._read(lines, stream, request, cancelled, native=bool(infill))
        except ContextLengthExceeded as exc:
            if opened or explicit or exc.param != "max_tokens":
                raise
            # vLLM refuses a defaulted max_tokens that does not fit; without one it fills the context.
            del body["max_tokens"]
            with self._open_stream(path, body, request.before_wait) as lines:
                yield from self._read(lines, stream, request, cancelled)
        except InvalidRequest as exc:
            raise _named(exc, p) from None
        except EngineError as exc:
            if infill and "not supported" in exc.message:  # 501: the model has no FIM tokens
                raise InvalidRequest(
                    "The 'suffix' parameter (fill-in-the-middle) needs a model whose GGUF has FIM tokens (prefix, "
                    "suffix, middle); this model has none. Send the prompt without 'suffix', or use a code model.",
                    param="suffix",
                    code="unsupported_parameter",
                ) from None
            raise
        yield from stream.finish()

    def _read(
        self,
        lines: StreamLines,
        stream: CompletionStream,
        request: GenerationRequest,
        cancelled: CancelCheck,
        native: bool = False,
    ) -> Iterator[GenerationItem]:
        for event in sse_events(lines):
            yield from stream.feed(payload.infill_event(event) if native else event)
            if stream.cut:
                break
            # in ticks once the first token is out, but not its last ones: the end of an answer is not held
            lines.paced = stream.sent > 0 and not stream.ends_within(self.read_tick)
            if stream.finished is None and cancelled():
                log.info("%s: request %s cancelled, closing the upstream stream", self.name, request.request_id)
                stream.finished = "stop"
                break

    # embeddings ----------------------------------------------------------------------------------

    def embed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """The sidecar's /v1/embeddings (llama-server with --embeddings, vLLM on an embedding model), as floats:
        the worker packs them itself, whatever the client's encoding_format."""
        if any(not isinstance(x, str) for x in inputs):
            token_ids.check(inputs, self._vocab_size())
        body = {"model": self.upstream_model, "input": [x if isinstance(x, str) else list(x) for x in inputs]}
        try:
            reply = self._json("POST", "/v1/embeddings", body | {"encoding_format": "float"})
        except EngineError as exc:
            if "too large to process" not in exc.message:  # llama-server's 500 for an input over its context
                raise
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context} tokens; an input is longer "
                f"({exc.message.split(': ', 1)[-1]}). Please shorten it.",
                param="input",
            ) from exc
        data = sorted(reply.get("data") or [], key=lambda d: d["index"])
        if len(data) != len(inputs):
            raise EngineError(f"{self.name} returned {len(data)} embeddings for {len(inputs)} inputs")
        usage = reply.get("usage") or {}
        return Embeddings([d["embedding"] for d in data], int(usage.get("prompt_tokens") or 0))

    def _vocab_size(self) -> int | None:
        if self._vocab is None:
            models = self._json("GET", "/v1/models").get("data") or [{}]
            model = next((m for m in models if m.get("id") == self.upstream_model), models[0])
            self._vocab = token_ids.vocab_size(model) or 0
        return self._vocab or None

    # HTTP ----------------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            raise EngineError(f"{self.name} engine is not loaded")
        return self._client

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One idempotent call; retried on a dropped connection, which is how a restarted (or just
        killed) sidecar first shows itself: the retry then reconnects, or fails to connect (503)."""
        for attempt in range(1, RETRIES + 1):
            try:
                response = self._http().request(method, path, json=body)
                break
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                if attempt == RETRIES:
                    raise error_from_transport(exc, self.name, self.base_url) from exc
                log.info("%s %s: %s, retrying", self.name, path, exc)
            except httpx.HTTPError as exc:
                raise error_from_transport(exc, self.name, self.base_url) from exc
        if response.status_code >= 400:
            raise error_from_response(response, self.name)
        return response.json()

    def _open_stream(
        self, path: str, body: dict[str, Any], before_wait: Callable[[bool], None] | None
    ) -> contextlib.AbstractContextManager[StreamLines]:
        """The response's lines; leaving the block closes the connection, which cancels upstream."""
        if self._streams is None:
            raise EngineError(f"{self.name} engine is not loaded")
        return self._streams.lines(path, body, tracing.outgoing(), before_wait=before_wait)


def _named(exc: InvalidRequest, p: SamplingParams) -> InvalidRequest:
    """llama-server's 400 for a grammar it cannot parse names no field; the client's grammar is the cause."""
    if exc.param is None and p.grammar and "grammar" in exc.message:
        return InvalidRequest(f"Invalid value for 'grammar': {exc.message}", param="grammar")
    return exc
