"""What partners tell us: application decisions, loans, repayments, overdue notices, defaults.

``callback_receive`` stores a verified event exactly once (unique per partner and event id) and
answers fast; ``callback_apply`` applies it later in a worker. Applying is monotonic — a later
state never goes back, a duplicate changes nothing — so events may arrive late, twice or out of
order and the final state is the same as in order.
"""

from __future__ import annotations

import datetime
import hashlib
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import serializers

from partners.models import Partner
from referrals import merkle
from referrals.models import CallbackEvent, Loan, LoanOverdue, Referral, Repayment
from referrals.services.reclaims import reclaims_block_for_loan

TYPES = (
    "application.accepted", "application.rejected", "application.returned", "loan.approved", "loan.disbursed",
    "repayment.posted", "loan.overdue", "loan.defaulted", "loan.closed",
)  # fmt: skip
MONEY = {"max_digits": 14, "decimal_places": 2, "min_value": Decimal("0")}


class ApplicationDecisionData(serializers.Serializer):
    application_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class ReturnedData(serializers.Serializer):
    reason = serializers.CharField(max_length=200)


class LoanIdData(serializers.Serializer):
    loan_id = serializers.CharField(max_length=64)


class ApprovedData(LoanIdData):
    credit_limit = serializers.DecimalField(**MONEY, required=False, allow_null=True, default=None)


class DisbursedData(LoanIdData):
    principal = serializers.DecimalField(**MONEY)
    apr = serializers.DecimalField(max_digits=6, decimal_places=4, min_value=Decimal("0"), max_value=Decimal("10"))
    term_months = serializers.IntegerField(min_value=1, max_value=360)
    first_due_date = serializers.DateField()


class RepaymentData(LoanIdData):
    installment = serializers.IntegerField(min_value=1, max_value=360)
    due_date = serializers.DateField()
    paid_date = serializers.DateField()
    principal = serializers.DecimalField(**MONEY)
    interest = serializers.DecimalField(**MONEY)


class OverdueData(LoanIdData):
    installment = serializers.IntegerField(min_value=1, max_value=360)
    due_date = serializers.DateField()
    days_past_due = serializers.IntegerField(min_value=1, max_value=3650)


DATA_SERIALIZERS = {
    "application.accepted": ApplicationDecisionData,
    "application.rejected": ApplicationDecisionData,
    "application.returned": ReturnedData,
    "loan.approved": ApprovedData,
    "loan.disbursed": DisbursedData,
    "repayment.posted": RepaymentData,
    "loan.overdue": OverdueData,
    "loan.defaulted": LoanIdData,
    "loan.closed": LoanIdData,
}


class CallbackSerializer(serializers.Serializer):
    event_id = serializers.CharField(max_length=100)
    type = serializers.ChoiceField(choices=TYPES)
    referral_id = serializers.UUIDField()
    occurred_at = serializers.DateTimeField()
    data = serializers.DictField()

    def validate(self, attrs):
        data = DATA_SERIALIZERS[attrs["type"]](data=attrs["data"])
        if not data.is_valid():
            raise serializers.ValidationError({"data": data.errors})
        attrs["data"] = data.validated_data
        return attrs


class CallbackConflict(Exception):
    """The same event id arrived before with a different body."""


class NotYet(Exception):
    """The event depends on one that has not arrived yet (e.g. "returned" before "accepted"); it
    stays received and is applied when the referral next changes."""


def _json_ready(data: dict) -> dict:
    return {k: (str(v) if isinstance(v, Decimal | datetime.date) else v) for k, v in data.items()}


def callback_receive(*, partner: Partner, body: dict) -> tuple[CallbackEvent, bool]:
    """Store a verified, validated callback. Returns ``(event, created)``; raises ``CallbackConflict``
    when the event id is known with a different body, ``Referral.DoesNotExist`` for an unknown
    referral or one of another partner."""
    digest = hashlib.sha256(merkle.canonical_json(body)).hexdigest()
    existing = CallbackEvent.objects.filter(partner=partner, event_id=str(body.get("event_id", ""))).first()
    if existing is not None:
        if existing.body_sha256 != digest:
            raise CallbackConflict(existing.event_id)
        return existing, False
    serializer = CallbackSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    referral = Referral.objects.get(pk=data["referral_id"], partner=partner)
    try:
        with transaction.atomic():
            event = CallbackEvent.objects.create(
                partner=partner, event_id=data["event_id"], type=data["type"], referral=referral,
                occurred_at=data["occurred_at"], data=_json_ready(data["data"]), body_sha256=digest,
            )  # fmt: skip
    except IntegrityError:  # the same event raced in on another connection
        event = CallbackEvent.objects.get(partner=partner, event_id=data["event_id"])
        if event.body_sha256 != digest:
            raise CallbackConflict(event.event_id) from None
        return event, False
    event_id = event.pk
    transaction.on_commit(lambda: _enqueue_apply(event_id))
    return event, True


def _enqueue_apply(event_id: int) -> None:
    from config.celery import enqueue
    from referrals.tasks import callback_apply_task

    enqueue(callback_apply_task, event_id)


def callbacks_sweep(*, now=None, grace_seconds: int = 60, horizon_hours: int = 24, limit: int = 5000) -> int:
    """Queue again the events still ``received`` a minute after they arrived: their message was
    lost (a broker restart, a worker killed before it took it) — applying is idempotent, so a
    message that was only slow costs nothing. Events that keep waiting for an earlier one are tried
    for a day, then stay visible as received in the admin."""
    now = now or timezone.now()
    stale = CallbackEvent.objects.filter(
        status=CallbackEvent.Status.RECEIVED,
        received_at__lt=now - datetime.timedelta(seconds=grace_seconds),
        received_at__gte=now - datetime.timedelta(hours=horizon_hours),
    ).order_by("received_at")
    ids = list(stale.values_list("pk", flat=True)[:limit])
    for event_id in ids:
        _enqueue_apply(event_id)
    return len(ids)


def callback_apply(event_id: int) -> str:
    """Apply one stored event (idempotent: an applied event is skipped), then any of the same
    referral's events that were waiting for it."""
    with transaction.atomic():
        event = CallbackEvent.objects.select_for_update(no_key=True).select_related("referral").get(pk=event_id)
        if event.status != CallbackEvent.Status.RECEIVED:
            return "already"
        outcome = _apply_one(event)
        if outcome != "waiting":
            waiting = CallbackEvent.objects.filter(referral_id=event.referral_id, status=CallbackEvent.Status.RECEIVED)
            for other in waiting.exclude(pk=event.pk).order_by("occurred_at", "pk").select_related("referral"):
                _apply_one(other)
        return outcome


def _apply_one(event: CallbackEvent) -> str:
    event.referral.refresh_from_db()
    try:
        with transaction.atomic():
            note = APPLY[event.type](event)
    except NotYet:
        return "waiting"
    event.status = CallbackEvent.Status.IGNORED if note else CallbackEvent.Status.PROCESSED
    event.note = note or ""
    event.processed_at = timezone.now()
    event.save(update_fields=["status", "note", "processed_at"])
    return event.status


# --- applications ---------------------------------------------------------------------------------
def referral_application_decided(referral_id, *, decision: str, application_id: str, reason: str, at) -> None:
    """The partner decided on the application (synchronously, or later by callback)."""
    from referrals.services.selection import referral_select

    referral = Referral.objects.select_for_update(no_key=True).get(pk=referral_id)
    if decision == "accepted":
        # submitting → submitted; a late "accepted" for a referral already submitted changes nothing.
        Referral.objects.filter(pk=referral.pk, status=Referral.Status.SUBMITTING).update(
            status=Referral.Status.SUBMITTED, accepted_at=at, application_id=application_id or referral.application_id,
            status_reason="", updated_at=timezone.now(),
        )  # fmt: skip
    elif decision == "rejected":
        Referral.objects.filter(pk=referral.pk, status=Referral.Status.SUBMITTING).update(
            status=Referral.Status.REJECTED, status_reason=(reason or "rejected")[:200], updated_at=timezone.now()
        )
    elif application_id and not referral.application_id:  # pending: remember the partner's id
        Referral.objects.filter(pk=referral.pk).update(application_id=application_id)
    referral_select(referral.applicant_id)


def _application_decision(event: CallbackEvent) -> str:
    decision = "accepted" if event.type == "application.accepted" else "rejected"
    status = event.referral.status
    if status in (Referral.Status.QUEUED, Referral.Status.PROBING, Referral.Status.PROBE_ACCEPTED):
        raise NotYet  # our own record of sending the application is not in yet
    if status != Referral.Status.SUBMITTING:
        return f"referral is {status}"
    referral_application_decided(
        event.referral_id, decision=decision, application_id=event.data.get("application_id", ""),
        reason=event.data.get("reason", ""), at=event.occurred_at,
    )  # fmt: skip
    return ""


def _returned(event: CallbackEvent) -> str:
    if event.referral.status == Referral.Status.SUBMITTING:
        raise NotYet  # the acceptance has not been applied yet
    updated = Referral.objects.filter(pk=event.referral_id, status=Referral.Status.SUBMITTED).update(
        status=Referral.Status.RETURNED, returned_at=event.occurred_at,
        status_reason=f"returned: {event.data.get('reason', '')}"[:200], updated_at=timezone.now(),
    )  # fmt: skip
    return "" if updated else f"referral is {event.referral.status}"


# --- loans ------------------------------------------------------------------------------------------
def _loan(event: CallbackEvent) -> Loan:
    loan, _created = Loan.objects.select_for_update(no_key=True).get_or_create(
        partner_id=event.partner_id, loan_id=event.data["loan_id"], defaults={"referral_id": event.referral_id}
    )
    return loan


def _advance(loan: Loan, status: str) -> None:
    if Loan.RANK[status] > Loan.RANK[loan.status]:
        loan.status = status


def _approved(event: CallbackEvent) -> str:
    loan = _loan(event)
    if loan.approved_at is None or event.occurred_at < loan.approved_at:
        loan.approved_at = event.occurred_at
        loan.credit_limit = event.data.get("credit_limit") or loan.credit_limit
    loan.save()
    return ""


def _disbursed(event: CallbackEvent) -> str:
    loan = _loan(event)
    data = event.data
    loan.principal, loan.apr = Decimal(data["principal"]), Decimal(data["apr"])
    loan.term_months, loan.first_due_date = data["term_months"], datetime.date.fromisoformat(data["first_due_date"])
    loan.disbursed_at = min(filter(None, [loan.disbursed_at, event.occurred_at]))
    _advance(loan, Loan.Status.DISBURSED)
    loan.save()
    return ""


def _repayment(event: CallbackEvent) -> str:
    loan = _loan(event)
    data = event.data
    _advance(loan, Loan.Status.DISBURSED)  # a repayment means the money went out
    loan.save()
    _, created = Repayment.objects.get_or_create(
        loan=loan, installment=data["installment"],
        defaults={
            "due_date": data["due_date"], "paid_date": data["paid_date"], "principal": Decimal(data["principal"]),
            "interest": Decimal(data["interest"]), "event": event,
        },
    )  # fmt: skip
    return "" if created else "instalment already recorded"


def _overdue(event: CallbackEvent) -> str:
    loan = _loan(event)
    _advance(loan, Loan.Status.DISBURSED)
    loan.save()
    data = event.data
    _, created = LoanOverdue.objects.get_or_create(
        loan=loan, installment=data["installment"], days_past_due=data["days_past_due"],
        defaults={"due_date": data["due_date"], "occurred_at": event.occurred_at, "event": event},
    )  # fmt: skip
    reclaims_block_for_loan(loan.pk)  # an open reclaim case no longer qualifies
    return "" if created else "overdue already recorded"


def _ended(status: str):
    def apply(event: CallbackEvent) -> str:
        loan = _loan(event)
        if loan.status in (Loan.Status.CLOSED, Loan.Status.DEFAULTED):
            # Both terminal: the later event decides, whatever order they came in.
            if loan.ended_at and event.occurred_at <= loan.ended_at:
                return f"loan already {loan.status}"
            loan.status = status
        else:
            _advance(loan, status)
        loan.ended_at = event.occurred_at
        loan.save()
        reclaims_block_for_loan(loan.pk)
        return ""

    return apply


APPLY = {
    "application.accepted": _application_decision,
    "application.rejected": _application_decision,
    "application.returned": _returned,
    "loan.approved": _approved,
    "loan.disbursed": _disbursed,
    "repayment.posted": _repayment,
    "loan.overdue": _overdue,
    "loan.defaulted": _ended(Loan.Status.DEFAULTED),
    "loan.closed": _ended(Loan.Status.CLOSED),
}
