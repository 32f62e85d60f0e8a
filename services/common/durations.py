"""Ollama-style `keep_alive` values: how long a model stays loaded after its last request.

Users of Ollama write `"5m"`, `"1h30m"`, `"30s"`, a number of seconds, `0` (unload as soon as it is idle) or any
negative value (keep it loaded). We read the same forms, so a client or a catalog written for Ollama works here.
"""

from __future__ import annotations

import math
import re

FOREVER = math.inf
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_S = 10 * 365 * 86_400.0
"""Anything longer is forever: a bound, so a hostile value cannot overflow a deadline."""


class BadDuration(ValueError):
    """Not a keep_alive value; the message says which forms are."""


def seconds(value: str | float | int) -> float:
    """Seconds for a keep_alive value; math.inf for a negative one (keep loaded)."""
    if isinstance(value, bool):
        raise BadDuration("keep_alive is a duration such as '5m', '30s', '1h30m', seconds, 0 or -1, not a boolean")
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = value.strip().lower()
        try:
            number = float(text)
        except ValueError:
            number = _parse_text(text)
    if math.isnan(number):
        raise BadDuration("keep_alive must be a number of seconds or a duration such as '5m'")
    if number < 0 or number > MAX_S:
        return FOREVER
    return number


def _parse_text(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise BadDuration(
            f"keep_alive {text[:32]!r} is not a duration: use forms such as '5m', '30s', '1h30m', seconds, 0 or -1"
        )
    return sign * sum(float(n) * _UNIT[u] for n, u in parts)


def describe(value: float) -> str:
    """For status pages and logs: '5m0s'-like, or 'forever'."""
    if value == FOREVER:
        return "forever"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or hours else "") + f"{secs}s"
