"""Gunicorn entry point: `gunicorn -c services/api/gunicorn_conf.py 'services.api.wsgi:create()'`."""

from __future__ import annotations

import logging

import falcon

from services.api.app import create_app
from services.api.request_id import RequestIdFilter
from services.common.catalog import Catalog
from services.common.redis_client import connect
from services.common.settings import settings_or_exit


def create() -> falcon.App:
    """Build the app from the environment; a bad setting stops the process with its name."""
    settings = settings_or_exit()
    log_filter = RequestIdFilter()
    handler = logging.StreamHandler()
    handler.addFilter(log_filter)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    catalog = Catalog.from_yaml(settings.models_file, settings.default_model)
    client = connect(
        settings.redis_url,
        max_connections=settings.api_threads * 2 + 8,
        longest_block=settings.sse_keepalive,  # XREAD BLOCK waits at most one keep-alive interval
    )
    return create_app(settings, client, catalog, log_filter=log_filter)
