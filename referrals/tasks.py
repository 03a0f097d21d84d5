"""Thin Celery tasks: load, call a service, return."""

from __future__ import annotations

import structlog
from celery import shared_task

from referrals.services import consents, ledger

log = structlog.get_logger(__name__)


@shared_task(name="referrals.consents_expire_due")
def consents_expire_due_task() -> int:
    count = consents.consents_expire_due()
    if count:
        log.info("consents expired", count=count)
    return count


@shared_task(name="referrals.ledger_checkpoint")
def ledger_checkpoint_task() -> int | None:
    checkpoint = ledger.ledger_checkpoint()
    if checkpoint is None:
        return None
    log.info("ledger checkpoint", checkpoint=checkpoint.pk, events=checkpoint.event_count, root=checkpoint.root)
    return checkpoint.pk
