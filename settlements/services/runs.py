"""Settlement runs: compute every partner's statement for a month in a Celery task, reporting
progress as it goes. A run killed half-way can be run again: drafts are replaced, approved
statements are never touched."""

from __future__ import annotations

import datetime

import structlog
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from partners.models import Partner
from referrals.models import Referral
from settlements import periods
from settlements.models import SettlementRun
from settlements.services.statements import statement_compute

log = structlog.get_logger(__name__)


def run_start(*, period: str, user) -> SettlementRun:
    """Validate the period and queue the run (the task starts once this transaction commits)."""
    periods.parse(period)
    if periods.month_start(period) > timezone.now():
        raise ValidationError({"period": [_("%(period)s has not started yet.") % {"period": period}]})
    run = SettlementRun.objects.create(period=period, started_by=user)
    run_id = run.pk
    transaction.on_commit(lambda: _enqueue(run_id))
    return run


def _enqueue(run_id) -> None:
    from config.celery import enqueue
    from settlements.tasks import settlement_run_task

    enqueue(settlement_run_task, str(run_id))


def partners_to_settle(period: str):
    """Every partner active now or with referrals routed to it (a partner offboarded mid-month is
    still billed for the month)."""
    routed = Referral.objects.filter(partner=OuterRef("pk"), created_at__lt=periods.window(period).end)
    return Partner.objects.filter(Q(status=Partner.Status.ACTIVE) | Exists(routed)).order_by("code")


def run_execute(run_id) -> SettlementRun:
    """Compute the run's month for every partner, one transaction per partner, updating progress
    after each. Statements that are no longer drafts are listed as left alone."""
    run = SettlementRun.objects.select_related("started_by").get(pk=run_id)
    partners = list(partners_to_settle(run.period))
    summary = []
    SettlementRun.objects.filter(pk=run.pk).update(
        status=SettlementRun.Status.RUNNING, progress=0.0, error="", updated_at=timezone.now()
    )
    try:
        for done, partner in enumerate(partners, start=1):
            statement, computed = statement_compute(partner=partner, period=run.period, user=run.started_by, run=run)
            summary.append(
                {"partner": partner.code, "statement": str(statement.pk), "computed": computed,
                 "status": statement.status, "lines": statement.line_count, "gross": str(statement.gross)}
            )  # fmt: skip
            SettlementRun.objects.filter(pk=run.pk).update(
                progress=done / len(partners), summary=summary, updated_at=timezone.now()
            )
    except Exception as exc:
        SettlementRun.objects.filter(pk=run.pk).update(
            status=SettlementRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:500], finished_at=timezone.now()
        )
        log.exception("settlement_run_failed", run=str(run.pk), period=run.period)
        raise
    SettlementRun.objects.filter(pk=run.pk).update(
        status=SettlementRun.Status.DONE, progress=1.0, finished_at=timezone.now(), summary=summary
    )
    log.info("settlement_run_done", run=str(run.pk), period=run.period, partners=len(partners))
    run.refresh_from_db()
    return run


def runs_sweep(*, now=None) -> int:
    """Re-queue runs that stopped moving (their worker died and the broker has not redelivered the
    message yet): running, and no progress for longer than the task's hard time limit. Running a
    month twice is harmless — drafts are replaced, approved statements left alone."""
    from settlements.tasks import HARD_LIMIT

    now = now or timezone.now()
    stalled = SettlementRun.objects.filter(
        status=SettlementRun.Status.RUNNING, updated_at__lt=now - datetime.timedelta(seconds=HARD_LIMIT + 60)
    ).values_list("pk", flat=True)
    count = 0
    for run_id in list(stalled):
        # Claim it first (a conditional update), so two sweepers do not both re-queue it.
        if SettlementRun.objects.filter(pk=run_id, status=SettlementRun.Status.RUNNING).update(updated_at=now):
            log.warning("settlement_run_requeued", run=str(run_id))
            transaction.on_commit(lambda rid=run_id: _enqueue(rid))
            count += 1
    return count
