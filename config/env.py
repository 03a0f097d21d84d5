"""Strict environment helpers.

django-environ does the parsing of URLs (``DATABASE_URL``, cache URLs) and reads ``NAME_FILE``
for secrets (``FileAwareEnv``); these helpers add the strictness it lacks: a boolean that is not
``true``/``false`` is an error, not a silent ``False``.
"""

from __future__ import annotations

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.FileAwareEnv()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(name: str, default: bool) -> bool:
    """A boolean variable; anything but true/false/1/0/yes/no/on/off is a configuration error."""
    raw = env.str(name, default=None)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """An integer variable, optionally bounded below."""
    raw = env.str(name, default=None)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_str(name: str, default: str) -> str:
    """A string variable; ``NAME_FILE`` (a path) is read instead when it is set (secrets)."""
    value = env.str(name, default=default)
    return value.strip() if isinstance(value, str) else value


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list."""
    raw = env_str(name, "")
    if not raw:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]
