"""Every setting of the service, read from the environment in one place.

Names match the system we replace (HOST, PORT, WORKERS, ...) so existing `.env` files keep working.
A bad value fails at start with a message that names the variable.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import durations

ROOT = Path(__file__).resolve().parents[2]

EngineName = Literal["auto", "mlx", "vllm", "llama_cpp", "llama_server"]
DeviceType = Literal["auto", "cpu", "cuda", "rocm", "metal"]


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    """Service settings; every field is documented in `.env.example`."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # public surface
    host: str = "0.0.0.0"
    port: int = Field(8001, ge=1, le=65535, description="public port (nginx)")
    workers: int = Field(2, ge=1, le=64, description="gunicorn processes per API replica")
    api_threads: int = Field(32, ge=1, le=1024, description="threads per gunicorn process")
    api_replicas: int = Field(2, ge=1, le=16)
    api_base_port: int = Field(8101, ge=1, le=65535, description="first API replica's port")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_prompts: bool = False
    log_dir: Path = ROOT / "run" / "logs"
    log_format: Literal["json", "text"] = "json"
    log_files: bool = Field(False, description="rotating files per category under LOG_DIR instead of stdout")
    log_file_max_mb: int = Field(10, ge=1, le=10_000)
    log_file_backups: int = Field(5, ge=0, le=1000)
    otel_exporter_otlp_endpoint: str = Field(
        "", description="tracing: OTLP/HTTP collector base URL (spans to <url>/v1/traces); empty = off"
    )

    # access (services/keys): empty = no keys, every route open (the native stack then listens on loopback)
    api_keys_file: Path | None = Field(None, description="JSON keys file (hashes only); re-read when it changes")
    allow_open: bool = Field(False, description="without keys, an API listening beyond loopback starts only if true")
    key_default_rpm: int = Field(0, ge=0, le=10_000_000, description="requests/min of a key without its own; 0 = none")
    key_default_tpm: int = Field(0, ge=0, le=1_000_000_000, description="tokens/min of a key without its own; 0 = none")
    key_default_concurrency: int = Field(0, ge=0, le=100_000, description="requests in flight per key; 0 = none")
    fair_share: bool = Field(True, description="serve a model's waiting jobs fairly across keys (api/admission.py)")
    usage_retention_days: int = Field(35, ge=1, le=3650, description="days a day's usage per key is kept in Redis")

    # engines and models
    inference_engine: EngineName = "auto"
    device_type: DeviceType = "auto"
    default_model: str = "gemma-3-270m"
    max_concurrent_models: int = Field(2, ge=1, le=64)
    models_file: Path = ROOT / "models" / "models.yaml"
    models_dir: Path = ROOT / "models"
    worker_slots: int = Field(1, ge=1, le=256)
    worker_metrics_port: int = Field(9201, ge=0, le=65535, description="0 disables")
    worker_metrics_host: str = Field("127.0.0.1", description="address the worker's metrics listen on")
    n_threads: int = Field(0, ge=0, le=256, description="llama.cpp threads; 0 = physical cores")
    n_ctx: int | None = Field(
        None, ge=256, le=1_048_576, description="caps every model's context per request; unset: each model's own"
    )
    memory_budget: str = Field(
        "auto", description="what a worker's models may fill: auto (80% of the memory free at start) or a size (4GiB)"
    )
    keep_alive: str = Field(
        "5m", description="how long a model loaded on request stays after its last one (Ollama's forms; -1: forever)"
    )
    load_on_demand: bool = Field(
        True, description="native stack: the default model's worker loads other catalog models on request (--on-demand)"
    )
    model_load_wait_s: float = Field(
        300.0, ge=0, le=86_400, description="how long a request waits for a worker to load its model on request"
    )
    llama_server_url: str = ""
    llama_server_api_key: str = Field(
        "", description="the key LLAMA_SERVER_URL's llama-server requires; one the worker starts gets a new one"
    )
    llama_server_parallel: int = Field(8, ge=1, le=256, description="slots of the llama-server the stack starts")
    llama_server_port: int = Field(8180, ge=1, le=65535, description="native stack: its llama-server's port")
    llama_server_nice: int = Field(
        10, ge=0, le=19, description="how much nicer than its worker the llama-server it starts runs (0: as nice)"
    )
    embedding_model: str = Field("all-minilm-l6-v2", description="native stack: a worker for it; empty = none")
    embedding_server_port: int = Field(8181, ge=1, le=65535, description="native stack: its llama-server's port")
    chat_model: str = Field(
        "smollm2-135m-instruct",
        description="chats naming an OpenAI model go to it while served (the native stack starts it); empty = none",
    )
    chat_server_port: int = Field(8182, ge=1, le=65535, description="native stack: the chat model's llama-server")
    vllm_url: str = ""

    # request handling
    request_timeout: float = Field(300.0, gt=0, le=86_400)
    max_concurrent_requests: int = Field(100, ge=1, le=100_000)
    max_queue_depth: int = Field(256, ge=1, le=1_000_000)
    wait_for_worker_s: float = Field(
        0.0, ge=0, le=86_400, description="a catalog model no worker serves: queued, waiting this long for one; 0 = 503"
    )
    default_max_tokens: int = Field(256, ge=1, le=1_048_576)
    max_request_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    sse_keepalive: float = Field(5.0, gt=0, le=300)
    lease_ttl: float = Field(10.0, ge=1, le=300, description="seconds a request's lease outlives its API process")
    max_n: int = Field(8, ge=1, le=128, description="choices one request may ask for: n, times a prompt list's length")
    cors_origins: str = Field("", description="origins browsers may call the API from, comma-separated; * any")

    # redis and lifetimes
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_tls_ca_file: Path | None = Field(None, description="rediss://: CA that signed Redis's certificate")
    redis_tls_cert_file: Path | None = Field(None, description="rediss://: certificate (server's; clients' if mutual)")
    redis_tls_key_file: Path | None = Field(None, description="rediss://: its private key")
    redis_sentinels: str = Field(
        "", description="Sentinels' host:port, comma-separated: the master is asked of them, not REDIS_URL's host"
    )
    redis_master_name: str = Field("inference", description="the master's name the sentinels monitor")
    stream_ttl: int = Field(600, ge=10, le=86_400)
    stream_flush_ms: float = Field(10.0, ge=0, le=1000, description="worker: how long a token may wait for others")
    stream_read_tick_ms: float = Field(
        50.0, ge=0, le=1000, description="worker, sidecars: a flowing stream is read every this often; 0: per token"
    )
    heartbeat_interval: float = Field(2.0, gt=0, le=60)
    heartbeat_ttl: int = Field(10, ge=2, le=600)

    # deployment (native stack and compose)
    run_dir: Path = ROOT / "run"
    redis_password: str = Field(
        "", description="native stack: empty = generated once into RUN_DIR; clients: used when REDIS_URL has none"
    )
    redis_bind: str = Field("127.0.0.1", description="native stack: addresses redis-server binds, space separated")
    prometheus_port: int = Field(9090, ge=1, le=65535)
    nginx_status_port: int = Field(8081, ge=1, le=65535, description="native stack: nginx's stub_status, loopback")
    nginx_exporter_port: int = Field(9113, ge=1, le=65535, description="native stack: prometheus-nginx-exporter")
    redis_exporter_port: int = Field(9121, ge=1, le=65535, description="native stack: prometheus-redis-exporter")
    nginx_read_timeout: float = Field(360.0, gt=0, le=86_400, description="keep above REQUEST_TIMEOUT")

    @field_validator(
        "api_keys_file", "redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file", "n_ctx", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: str) -> str:
        durations.seconds(value)
        return value

    @field_validator("memory_budget")
    @classmethod
    def _memory_budget(cls, value: str) -> str:
        if value.strip().lower() != "auto":
            TypeAdapter(ByteSize).validate_python(value.strip())
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: str) -> str:
        for address in filter(None, (a.strip() for a in value.split(","))):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address!r} is not host:port")
        return value


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY$")
URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")


def shown(name: str, value: str) -> str:
    """A setting's value as an error may echo it: a secret's never, a URL's without its password."""
    if SECRET_NAME.search(name):
        return "<hidden>"
    return URL_PASSWORD.sub(r"\1***@", value)


def load_settings() -> Settings:
    """Build settings from the environment, turning pydantic's report into one line per variable (its own
    report quotes the input: a malformed REDIS_URL would print its password)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{name}={shown(name, os.environ.get(name, ''))!r}: {err['msg']}"
            for err in exc.errors()
            for name in [str(err["loc"][0]).upper()]
        )
        raise SettingsError(f"invalid setting: {problems}") from None


def settings_or_exit() -> Settings:
    """For entry points: the settings, or the one-line reason on stderr and exit status 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
