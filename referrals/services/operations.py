"""What operations does by hand: retry a failed referral, cancel one that is still open."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from referrals.models import Dispatch, Referral
from referrals.services.dispatch import enqueue_dispatches, lock_consents


@transaction.atomic
def referral_retry(*, actor, referral: Referral) -> Referral:
    """Put a ``failed`` referral back: its failed call is tried again with the same idempotency key
    (the partner recognises a repeated application), and every send still re-checks the consent."""
    lock_consents(referral.consent_id)  # the house lock order: consent → dispatch → referral
    referral = Referral.objects.select_for_update(no_key=True).get(pk=referral.pk)
    if referral.status != Referral.Status.FAILED:
        raise ValidationError(
            {"status": [_("Only failed referrals can be retried; this one is %(s)s.") % {"s": referral.status}]}
        )
    dispatch = referral.dispatches.filter(status=Dispatch.Status.FAILED).order_by("-created_at").first()
    if dispatch is None:
        raise ValidationError({"status": [_("This referral has no failed call to retry.")]})
    if dispatch.kind == Dispatch.Kind.APPLICATION:
        taken = Referral.objects.filter(applicant_id=referral.applicant_id, status=Referral.Status.SUBMITTED).count()
        if taken >= settings.SPILLWAY_MAX_APPLICATIONS_PER_APPLICANT:
            raise ValidationError({"status": [_("Another partner already took this applicant's application.")]})
        referral.status = Referral.Status.SUBMITTING
    else:
        referral.status = Referral.Status.QUEUED
    now = timezone.now()
    referral.status_reason = f"retried by {actor.get_username()}"  # data, like every status reason
    referral.save(update_fields=["status", "status_reason", "updated_at"])
    Dispatch.objects.filter(pk=dispatch.pk).update(
        status=Dispatch.Status.PENDING,
        next_attempt_at=now,
        enqueued_at=now,
        attempts=0,
        last_error="",
        completed_at=None,
    )
    enqueue_dispatches([dispatch])
    return referral


@transaction.atomic
def referral_cancel(*, actor, referral: Referral, reason: str) -> Referral:
    """Stop an open referral: nothing more is sent for it."""
    if not (reason or "").strip():
        raise ValidationError({"reason": [_("A reason is required.")]})
    lock_consents(referral.consent_id)
    referral = Referral.objects.select_for_update(no_key=True).get(pk=referral.pk)
    if referral.status not in Referral.OPEN and referral.status != Referral.Status.FAILED:
        raise ValidationError({"status": [_("Only open or failed referrals can be cancelled.")]})
    now = timezone.now()
    referral.status = Referral.Status.CANCELLED
    referral.status_reason = f"{actor.get_username()}: {reason.strip()}"[:200]
    referral.save(update_fields=["status", "status_reason", "updated_at"])
    referral.dispatches.filter(status=Dispatch.Status.PENDING).update(
        status=Dispatch.Status.CANCELLED, completed_at=now, last_error="cancelled by operations"
    )
    return referral
