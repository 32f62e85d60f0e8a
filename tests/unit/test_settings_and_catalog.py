"""Settings come from the environment and fail naming the variable; model names resolve via models.yaml."""

from pathlib import Path

import pytest

from services.common.catalog import Catalog
from services.common.errors import ModelNotFound
from services.common.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_old_service(monkeypatch):
    for name in ("PORT", "REQUEST_TIMEOUT", "MAX_CONCURRENT_REQUESTS", "INFERENCE_ENGINE"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.port, s.request_timeout, s.max_concurrent_requests, s.inference_engine) == (8001, 300, 100, "auto")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("INFERENCE_ENGINE", "tpu"),
        ("REQUEST_TIMEOUT", "-1"),
        ("REDIS_URL", "http://x"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_setting_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_env_overrides(monkeypatch):
    monkeypatch.setenv("DEFAULT_MAX_TOKENS", "64")
    monkeypatch.setenv("INFERENCE_ENGINE", "llama_cpp")
    s = load_settings()
    assert s.default_max_tokens == 64 and s.inference_engine == "llama_cpp"


def test_catalog_resolves_ids_aliases_and_openai_names():
    catalog = Catalog.from_yaml(ROOT / "models" / "models.yaml")
    assert catalog.default == "gemma-3-270m"
    assert catalog.resolve("gemma-3-270m") == "gemma-3-270m"
    assert catalog.resolve("GPT-3.5-TURBO") == "gemma-3-270m"
    assert catalog.resolve("text-davinci-003") == "gemma-3-270m"
    assert catalog.resolve("qwen-0.5b") == "qwen2.5-0.5b-instruct"
    with pytest.raises(ModelNotFound) as info:
        catalog.resolve("made-up-model")
    assert info.value.status == 404 and info.value.param == "model"


def test_catalog_default_may_be_an_alias():
    assert Catalog.from_yaml(ROOT / "models" / "models.yaml", "qwen-0.5b").default == "qwen2.5-0.5b-instruct"
