"""Housekeeping tasks that belong to no business app."""

from __future__ import annotations

import structlog
from celery import shared_task
from django.utils import timezone

log = structlog.get_logger(__name__)


@shared_task(name="config.tasks.heartbeat")
def heartbeat() -> str:
    """Beat's proof of life: shows in the worker log that beat schedules and a worker runs."""
    now = timezone.now().isoformat()
    log.info("beat heartbeat", at=now)
    return now
