"""REDIS_SENTINELS and REDIS_MASTER_NAME reach every client made by services/common/redis_client.py: the master is
asked of the Sentinels, REDIS_URL gives the password and database, REDIS_PASSWORD stands in for a URL without one.
The failover itself is tested for real in tests/e2e/stack/test_redis_failover.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.redis_client import BlockingSentinelPool, from_settings, sentinels
from services.common.settings import Settings


def test_sentinel_addresses_are_checked_and_parsed() -> None:
    settings = Settings(redis_sentinels="10.0.0.1:26379, redis-1.redis-headless:26379,[::1]:26380")
    assert sentinels(settings) == [("10.0.0.1", 26379), ("redis-1.redis-headless", 26379), ("::1", 26380)]
    for bad in ("redis-0", "redis-0:", "redis-0:port", ":26379", "h:70000"):
        with pytest.raises(ValidationError, match="host:port"):
            Settings(redis_sentinels=bad)


def test_sentinel_client_asks_for_the_master_with_the_urls_password_and_database() -> None:
    settings = Settings(
        redis_url="redis://:url-secret@ignored:6379/3", redis_sentinels="127.0.0.1:1", redis_master_name="prod"
    )
    client = from_settings(settings)
    pool = client.connection_pool
    assert isinstance(pool, BlockingSentinelPool) and pool.service_name == "prod"
    assert pool.connection_kwargs["password"] == "url-secret" and pool.connection_kwargs["db"] == 3
    assert pool.max_connections == 256 and pool.timeout == 5  # waits for a connection, as the plain pool does
    asking = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert (asking["host"], asking["port"], asking["password"]) == ("127.0.0.1", 1, "url-secret")


def test_redis_password_stands_in_for_a_url_without_one() -> None:
    plain = from_settings(Settings(redis_url="redis://h:6379/0", redis_password="env-secret"))
    assert plain.connection_pool.connection_kwargs["password"] == "env-secret"
    both = from_settings(Settings(redis_url="redis://:url-secret@h:6379/0", redis_password="env-secret"))
    assert both.connection_pool.connection_kwargs["password"] == "url-secret"
    watched = from_settings(Settings(redis_sentinels="h:26379", redis_password="env-secret"))
    assert watched.connection_pool.connection_kwargs["password"] == "env-secret"
