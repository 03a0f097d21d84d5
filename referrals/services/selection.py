"""Ping/post selection: probes go to every candidate; the application goes to the best partner
that accepted (highest contract priority, then higher expected fee, then partner code), falling
through to the next on rejection or permanent failure; the rest end ``not_selected``."""

from __future__ import annotations

import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from referrals.models import Dispatch, Referral
from referrals.services.dispatch import enqueue_dispatches, lock_consents


def _rank(referral: Referral) -> tuple:
    return (-referral.priority, -referral.expected_fee, referral.partner.code)


def referral_select(applicant_id, *, now: datetime.datetime | None = None) -> list[Dispatch]:
    """Decide what happens next for one applicant's referrals; returns new application dispatches.

    Safe to call any number of times and from any worker: it locks the applicant's referrals.
    """
    now = now or timezone.now()
    window = datetime.timedelta(seconds=settings.SPILLWAY_PROBE_WINDOW_SECONDS)
    with transaction.atomic():
        first = Referral.objects.filter(applicant_id=applicant_id).values_list("consent_id", flat=True).first()
        if first is None:
            return []
        lock_consents(first)  # consent before referral, like every other writer (no deadlock)
        referrals = list(
            Referral.objects.select_for_update(of=("self",), no_key=True)
            .filter(applicant_id=applicant_id)
            .select_related("partner")
        )
        limit = settings.SPILLWAY_MAX_APPLICATIONS_PER_APPLICANT
        submitted = [r for r in referrals if r.status == Referral.Status.SUBMITTED]
        if len(submitted) >= limit:
            _close(referrals, Referral.Status.NOT_SELECTED, "another partner took the application", now)
            return []
        if any(r.status == Referral.Status.SUBMITTING for r in referrals):
            return []  # an application is out; wait for its answer
        # Silence past the probe window counts as a decline.
        late = [
            r for r in referrals
            if r.status in (Referral.Status.QUEUED, Referral.Status.PROBING) and r.created_at + window <= now
        ]  # fmt: skip
        if late:
            waiting = (Referral.Status.QUEUED, Referral.Status.PROBING)
            Referral.objects.filter(pk__in=[r.pk for r in late], status__in=waiting).update(
                status=Referral.Status.PROBE_DECLINED, status_reason="no answer within the probe window", updated_at=now
            )  # fmt: skip
            Dispatch.objects.filter(referral__in=late, kind=Dispatch.Kind.PROBE, status=Dispatch.Status.PENDING).update(
                status=Dispatch.Status.CANCELLED, completed_at=now, last_error="probe window closed"
            )
            for r in late:
                r.status = Referral.Status.PROBE_DECLINED
        accepted = sorted((r for r in referrals if r.status == Referral.Status.PROBE_ACCEPTED), key=_rank)
        undecided = [r for r in referrals if r.status in (Referral.Status.QUEUED, Referral.Status.PROBING)]
        if not accepted:
            return []
        best = accepted[0]
        # Only pick before everyone answered if nobody still undecided could outrank the best.
        if any(_rank(r) < _rank(best) for r in undecided):
            return []
        Referral.objects.filter(pk=best.pk, status=Referral.Status.PROBE_ACCEPTED).update(
            status=Referral.Status.SUBMITTING, updated_at=now
        )
        dispatch, created = Dispatch.objects.get_or_create(
            kind=Dispatch.Kind.APPLICATION,
            idempotency_key=str(best.pk),  # the partner sees the referral id on every retry
            defaults={
                "partner": best.partner,
                "consent_id": best.consent_id,
                "referral": best,
                "next_attempt_at": now,
                "enqueued_at": now,
            },
        )
        if not created:
            return []
        enqueue_dispatches([dispatch])
        return [dispatch]


def _close(referrals, status: str, reason: str, now) -> None:
    still_open = [r.pk for r in referrals if r.status in Referral.OPEN and r.status != Referral.Status.SUBMITTING]
    Referral.objects.filter(pk__in=still_open).update(status=status, status_reason=reason, updated_at=now)
    Dispatch.objects.filter(referral_id__in=still_open, status=Dispatch.Status.PENDING).update(
        status=Dispatch.Status.CANCELLED, completed_at=now, last_error=reason
    )


def referral_select_due(*, now: datetime.datetime | None = None, limit: int = 500) -> int:
    """Close probe windows that ran out with no answer (the sweeper calls this)."""
    now = now or timezone.now()
    cutoff = now - datetime.timedelta(seconds=settings.SPILLWAY_PROBE_WINDOW_SECONDS)
    applicant_ids = list(
        Referral.objects.filter(status__in=(Referral.Status.QUEUED, Referral.Status.PROBING), created_at__lte=cutoff)
        .values_list("applicant_id", flat=True)
        .distinct()[:limit]
    )
    for applicant_id in applicant_ids:
        referral_select(applicant_id, now=now)
    return len(applicant_ids)
