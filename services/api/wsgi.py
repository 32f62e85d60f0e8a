"""Gunicorn entry point: `gunicorn -c services/api/gunicorn_conf.py 'services.api.wsgi:create()'`."""

from __future__ import annotations

import os

import falcon

from services.api.app import create_app
from services.common import logs
from services.common.live_catalog import LiveCatalog
from services.common.redis_client import from_settings
from services.common.settings import settings_or_exit


def process_name() -> str:
    """This replica's name in log lines and files (API_REPLICA, which the native stack sets)."""
    return os.environ.get("API_REPLICA", "api")


def create() -> falcon.App:
    """Build the app from the environment; a bad setting stops the process with its name."""
    settings = settings_or_exit()
    name = process_name()
    # with LOG_FILES each gunicorn worker writes its own files, so none rotates another's
    logs.configure(settings, f"{name}-{os.getpid()}" if settings.log_files else name)
    catalog = LiveCatalog.or_exit(settings.models_file, settings.default_model)  # re-read when the file changes
    client = from_settings(
        settings,
        max_connections=settings.api_threads * 2 + 8,
        longest_block=settings.sse_keepalive,  # XREAD BLOCK waits at most one keep-alive interval
    )
    return create_app(settings, client, catalog)
