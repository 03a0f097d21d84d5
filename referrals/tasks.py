"""Thin Celery tasks: load, call a service, return."""

from __future__ import annotations

import structlog
from celery import shared_task
from django.conf import settings

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


@shared_task(name="referrals.dispatch_send")
def dispatch_send_task(dispatch_ids: list[int]) -> dict:
    """Send the given dispatches (one message per applicant or per sweep batch, not per row)."""
    from referrals.services.dispatch import dispatch_send

    outcomes: dict[str, int] = {}
    for dispatch_id in dispatch_ids:
        outcome = dispatch_send(dispatch_id)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


@shared_task(name="referrals.dispatch_sweep")
def dispatch_sweep_task() -> dict:
    from referrals.services.dispatch import dispatch_sweep

    result = dispatch_sweep()
    if any(result.values()):
        log.info("dispatch sweep", **result)
    return result


@shared_task(name="referrals.callbacks_sweep")
def callbacks_sweep_task() -> int:
    from referrals.services.callbacks import callbacks_sweep

    count = callbacks_sweep()
    if count:
        log.info("callbacks sweep", requeued=count)
    return count


@shared_task(name="referrals.callback_apply")
def callback_apply_task(event_id: int) -> str:
    from referrals.services.callbacks import callback_apply

    return callback_apply(event_id)


@shared_task(
    name="referrals.reclaims_scan",
    soft_time_limit=max(1, settings.SPILLWAY_LONG_TASK_TIME_LIMIT - 100),
    time_limit=settings.SPILLWAY_LONG_TASK_TIME_LIMIT,
)
def reclaims_scan_task() -> dict:
    """Nightly: new reclaim candidates, near misses, blocks, hand-backs."""
    from referrals.services.reclaims import reclaims_scan

    result = reclaims_scan().as_dict()
    log.info("reclaims scan", **result)
    return result


@shared_task(
    name="referrals.job_execute",
    soft_time_limit=max(1, settings.SPILLWAY_LONG_TASK_TIME_LIMIT - 100),
    time_limit=settings.SPILLWAY_LONG_TASK_TIME_LIMIT,
)
def job_execute_task(job_id: str) -> str | None:
    """A background job from the admin (verification, export, bulk retry); safe to run again."""
    from referrals.services.jobs import job_execute

    job = job_execute(job_id)
    return job.status if job else None


@shared_task(name="referrals.jobs_sweep")
def jobs_sweep_task() -> dict:
    from referrals.services.jobs import jobs_sweep

    result = jobs_sweep()
    if any(result.values()):
        log.info("jobs sweep", **result)
    return result
