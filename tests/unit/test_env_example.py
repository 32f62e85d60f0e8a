"""The documented settings and the code's settings agree, and every compose variable is documented."""

import re
from pathlib import Path

from services.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def documented() -> set[str]:
    return set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))


def compose_variables() -> set[str]:
    files = [ROOT / "docker-compose.yml", *sorted((ROOT / "compose").glob("*.yml"))]
    return {v for f in files for v in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", f.read_text())}


def test_every_setting_is_documented():
    assert {name.upper() for name in Settings.model_fields} <= documented()


def test_every_documented_name_is_a_setting_or_a_compose_variable():
    settings = {name.upper() for name in Settings.model_fields}
    assert documented() - settings <= compose_variables(), "documented but read by nothing"


def test_every_compose_variable_is_documented():
    assert compose_variables() <= documented()
