"""The documented settings and the code's settings are the same set."""

import re
from pathlib import Path

from services.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented_and_nothing_else():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}
