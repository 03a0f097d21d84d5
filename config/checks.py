"""System checks: production must not run on development secrets or keys."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

from config.crypto import parse_keys


def _secret_problems() -> list[Error]:
    problems: list[Error] = []
    if settings.SECRET_KEY == settings.DEV_SECRET_KEY or len(settings.SECRET_KEY) < 40:
        problems.append(Error("SECRET_KEY is the development key or too short.", id="spillway.E001"))
    try:
        ring = parse_keys(settings.SPILLWAY_ENCRYPTION_KEYS)
        dev_keys = {key for _, key in parse_keys(settings.DEV_ENCRYPTION_KEYS).keys}
        if any(key in dev_keys for _, key in ring.keys):
            problems.append(Error("SPILLWAY_ENCRYPTION_KEYS contains the development key.", id="spillway.E002"))
    except ImproperlyConfigured as exc:
        problems.append(Error(f"SPILLWAY_ENCRYPTION_KEYS is invalid: {exc}", id="spillway.E003"))
    key = settings.SPILLWAY_BLIND_INDEX_KEY
    if key == settings.DEV_BLIND_INDEX_KEY or len(key) < 32:
        problems.append(Error("SPILLWAY_BLIND_INDEX_KEY is the development key or too short.", id="spillway.E004"))
    return problems


@register(Tags.security, deploy=False)
def production_secrets_check(app_configs, **kwargs) -> list[Error]:
    """With DEBUG off, every development secret and key must have been replaced."""
    if settings.DEBUG:
        return []
    return _secret_problems()


@register()
def celery_visibility_check(app_configs, **kwargs) -> list[Error]:
    """A Redis visibility timeout shorter than a task's time limit makes slow tasks run twice."""
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout")
    longest = max(settings.CELERY_TASK_TIME_LIMIT, settings.SPILLWAY_LONG_TASK_TIME_LIMIT)
    if timeout is not None and timeout <= longest:
        return [
            Error(
                "CELERY_VISIBILITY_TIMEOUT must be longer than the longest task time limit "
                f"(CELERY_TASK_TIME_LIMIT / SPILLWAY_LONG_TASK_TIME_LIMIT: {longest} s).",
                id="spillway.E010",
            )
        ]
    return []


def refuse_insecure_production() -> None:
    """Called at start-up of every process (web, worker, beat): not only by ``manage.py check``."""
    if settings.DEBUG:
        return
    problems = _secret_problems()
    if problems:
        raise ImproperlyConfigured("Refusing to start with DEBUG off: " + " ".join(p.msg for p in problems))
