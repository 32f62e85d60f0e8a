"""create_app(): the Falcon application, every dependency passed in (no import-time globals)."""

from __future__ import annotations

import logging

import falcon
import redis

from services.api import errors
from services.api.limits.access import Access, AccessMiddleware, Routes
from services.api.limits.ratelimit import RateLimiter, RateLimitHeaders
from services.api.limits.usage import UsageBook, UsageCollector, UsageResource
from services.api.observability.metrics import ApiMetrics, MetricsMiddleware, MetricsResource
from services.api.observability.request_id import RequestIdMiddleware
from services.api.observability.state_metrics import QueueProbe, StateCollector
from services.api.observability.traffic import RecentTraffic
from services.api.pipeline.admission import Admission
from services.api.pipeline.gateway import Gateway
from services.api.pipeline.queue_wait import QueueWaitMiddleware
from services.api.pipeline.serving import Serving
from services.api.routes.completions import ChatCompletions, Completions
from services.api.routes.embeddings import EmbeddingsResource
from services.api.routes.models import ModelsResource
from services.api.routes.openapi import OpenApiResource
from services.api.routes.responses import ResponsesResource
from services.api.routes.status_page import StatusPage
from services.api.routes.system import HealthResource, ModelCommandResource, StatusResource
from services.common.catalog import Catalog
from services.common.errors import ServiceUnavailable
from services.common.registry import Registry
from services.common.settings import Settings
from services.common.tracing import Tracing, TracingMiddleware
from services.keys.ring import KeyRing

log = logging.getLogger(__name__)


def handle_redis_down(req: falcon.Request, resp: falcon.Response, ex: redis.RedisError, params: dict) -> None:
    log.warning("redis error on %s %s: %s", req.method, req.path, ex)
    errors.render(resp, ServiceUnavailable("The queue (Redis) is unavailable; retry shortly.", retry_after=2))


EXPOSED = ("X-Request-ID", "Retry-After", "x-should-retry", "x-gateway-overhead-ms", "x-queue-wait-ms",
           "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")  # fmt: skip
"""Our response headers a browser page may read (CORS hides all but a safelisted few)."""


def cors(origins: str) -> falcon.CORSMiddleware:
    """CORS_ORIGINS: `*`, or origins separated by commas. Preflights are answered by Falcon's own OPTIONS
    responder (the access middleware lets them through: browsers send no key with a preflight)."""
    allowed = "*" if origins.strip() == "*" else [o.strip() for o in origins.split(",") if o.strip()]
    return falcon.CORSMiddleware(allow_origins=allowed, expose_headers=EXPOSED)


def create_app(
    settings: Settings,
    client: redis.Redis,
    catalog: Catalog,
    metrics: ApiMetrics | None = None,
) -> falcon.App:
    traffic = RecentTraffic(client)
    metrics = metrics or ApiMetrics(recent=traffic, models=catalog.ids())
    registry = Registry(client, settings.heartbeat_ttl)
    limiter = RateLimiter(client, settings)
    usage = UsageBook(client, retention_days=settings.usage_retention_days)
    admission = Admission(
        client,
        max_inflight=settings.max_concurrent_requests,
        max_queue_depth=settings.max_queue_depth,
        limiter=limiter,
        fair_share=settings.fair_share,
        usage=usage,
    )
    gateway = Gateway(
        client,
        registry,
        stream_ttl=settings.stream_ttl,
        keepalive=settings.sse_keepalive,
        lease_ttl=settings.lease_ttl,
        admission=admission,
        traffic=traffic,
        wait_for_worker_s=settings.wait_for_worker_s,
        model_load_wait_s=settings.model_load_wait_s,
    )

    middleware = [RequestIdMiddleware(), MetricsMiddleware(metrics), QueueWaitMiddleware()]
    traces = Tracing.from_settings(settings, "inference-api")
    if traces.enabled:  # off: not even a middleware call
        middleware.insert(1, TracingMiddleware(traces))  # after the request id, which the span records
    if settings.cors_origins:  # first, so that its headers reach every answer, errors and 401s included
        middleware.insert(0, cors(settings.cors_origins))
    app = falcon.App(middleware=middleware, cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    routes = Routes(app)
    # who may call each route is declared below, where it is added; the check runs on the matched route
    ring = KeyRing(settings.api_keys_file) if settings.api_keys_file is not None else None
    app.add_middleware(AccessMiddleware(routes, ring))
    if ring is not None:
        app.add_middleware(RateLimitHeaders(limiter))  # x-ratelimit-* on every keyed response
    errors.install(app)
    app.add_error_handler(redis.RedisError, handle_redis_down)

    models = ModelsResource(catalog, gateway)
    serving = Serving(settings, catalog, gateway, metrics)  # every generating or embedding route's lifecycle
    routes.add("/v1/chat/completions", ChatCompletions(settings, catalog, serving), Access.KEY)
    routes.add("/v1/completions", Completions(settings, catalog, serving), Access.KEY)
    routes.add("/v1/embeddings", EmbeddingsResource(settings, catalog, serving), Access.KEY)
    routes.add("/v1/responses", ResponsesResource(settings, catalog, serving), Access.KEY)
    routes.add("/v1/models", models, Access.KEY)
    routes.add("/v1/models/load", ModelCommandResource("load", settings, catalog, gateway), Access.ADMIN)
    routes.add("/v1/models/unload", ModelCommandResource("unload", settings, catalog, gateway), Access.ADMIN)
    routes.add("/v1/models/{model_id:path}", models, Access.KEY, suffix="one")
    routes.add("/v1/system/status", StatusResource(settings, catalog, gateway, admission, traffic), Access.ADMIN)
    routes.add("/v1/usage", UsageResource(usage), Access.ADMIN)
    routes.add("/status", StatusPage(), Access.PUBLIC)  # the page only; the data it fetches is ADMIN
    routes.add("/health", HealthResource(client, gateway), Access.PUBLIC)
    routes.add("/openapi.json", OpenApiResource(routes), Access.PUBLIC)  # built from these routes on first GET
    waiting = QueueProbe(client, lambda model: gateway.jobs.queue(model).key)
    state = StateCollector(registry.live, waiting, catalog.ids(), catalog.default)
    metrics_resource = MetricsResource(metrics, state)
    metrics_resource.state.register(UsageCollector(usage))
    routes.add("/metrics", metrics_resource, Access.ADMIN)
    return app
