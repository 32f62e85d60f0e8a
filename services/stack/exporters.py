"""Redis's and nginx's standard Prometheus exporters in the native stack, as compose runs their images.

Debian packages both (`prometheus-redis-exporter`, oliver006/redis_exporter; `prometheus-nginx-exporter`,
nginx/nginx-prometheus-exporter), installed by `make system`. The nginx exporter reads nginx's
stub_status on its own loopback port (nginx/nginx.conf.template, NGINX_STATUS_LISTEN). Redis's password
reaches its exporter in the environment, never as an argument. An exporter that is not installed is left
out, with its scrape job: the stack still runs, only those metrics are missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from services.common.settings import Settings
from services.stack.binaries import which

NGINX_EXPORTER = "prometheus-nginx-exporter"
REDIS_EXPORTER = "prometheus-redis-exporter"
STUB_STATUS_PATH = "/stub_status"


@dataclass(frozen=True)
class Exporter:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    port: int

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape_job(self) -> dict[str, Any]:
        return {
            "job_name": self.name.removesuffix("-exporter"),
            "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
        }


def nginx_status_listen(settings: Settings) -> str:
    return f"127.0.0.1:{settings.nginx_status_port}"


def native(settings: Settings, env: Mapping[str, str], redis_url: str) -> list[Exporter]:
    """The exporters installed here, configured for this stack; `env` is the stack's (PATH and the like)."""
    out = []
    base = {k: v for k, v in env.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    nginx = which(NGINX_EXPORTER)
    if nginx is not None:
        argv = (
            nginx,
            f"-nginx.scrape-uri=http://{nginx_status_listen(settings)}{STUB_STATUS_PATH}",
            f"-web.listen-address=127.0.0.1:{settings.nginx_exporter_port}",
            "-nginx.retries=30",  # it exits when nginx does not answer at its start; all start at once
            "-nginx.retry-interval=1s",
        )
        out.append(Exporter("nginx-exporter", argv, base, settings.nginx_exporter_port))
    redis = which(REDIS_EXPORTER)
    if redis is not None:
        argv = (redis, f"-web.listen-address=127.0.0.1:{settings.redis_exporter_port}")
        if settings.redis_tls_ca_file is not None:
            argv += (f"-tls-ca-cert-file={settings.redis_tls_ca_file}",)
        addr, password = split_password(redis_url)
        secrets = {"REDIS_ADDR": addr, "REDIS_PASSWORD": password or env.get("REDIS_PASSWORD", "")}
        out.append(Exporter("redis-exporter", argv, base | secrets, settings.redis_exporter_port))
    return out


def split_password(url: str) -> tuple[str, str]:
    """(the URL without its password, the password): the exporter logs the address it fails to reach."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, ""
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    netloc = f"{user}{host}:{parts.port}" if parts.port else f"{user}{host}"
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)
