"""Reclaims (回捞): find loans whose borrower may be taken back, review them, tell the partner,
hand the borrower back to origination.

A loan qualifies when every rule in ``RULES`` holds: the routing contract version allows reclaims,
the loan is open, at least ``min_ontime_installments`` repayments were paid on or before their due
dates, no overdue was ever reported, ``non_solicit_days`` have passed since the partner accepted the
application, and the referral's consent is granted, unexpired and covers ``reclaim_offer``.

The rules are checked when the scan finds a loan, at every step of the review, and once more
immediately before the notice leaves (inside the dispatch claim, with the consent locked — the
same lock a withdrawal takes). A rule that stopped holding blocks the case and nothing is sent.
Locks are taken in the house order: consent → dispatch → reclaim.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

from partners.connectors.base import NoticeAnswer
from referrals.models import Consent, ConsentEvent, Dispatch, Loan, LoanOverdue
from referrals.models.reclaim import Reclaim, ReclaimNearMiss, ReclaimTransition
from referrals.services import dispatch as outbox
from referrals.services.ledger import ledger_append

SHANGHAI = datetime.timezone(datetime.timedelta(hours=8))
OPEN_LOAN = (Loan.Status.APPROVED, Loan.Status.DISBURSED)


# --- the rules ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Facts:
    """What the rules look at for one loan (one query for many loans: ``loans_with_facts``)."""

    loan: Loan
    ontime: int
    overdue: bool
    now: datetime.datetime

    @property
    def terms(self) -> dict:
        return self.loan.referral.contract.reclaim or {}

    @property
    def consent(self) -> Consent:
        return self.loan.referral.consent


@dataclass(frozen=True)
class Rule:
    code: str
    label: str
    check: Callable[[Facts], str]  # "" when the rule holds, else why not


def _contract_allows(f: Facts) -> str:
    return "" if f.terms.get("allowed") is True else _("the routing contract version does not allow reclaims")


def _loan_open(f: Facts) -> str:
    return "" if f.loan.status in OPEN_LOAN else _("the loan is %(status)s") % {"status": f.loan.status}


def _ontime(f: Facts) -> str:
    needed = int(f.terms.get("min_ontime_installments") or 0)
    if f.ontime >= needed:
        return ""
    return _("%(n)d of %(needed)d instalments paid on time") % {"n": f.ontime, "needed": needed}


def _no_overdue(f: Facts) -> str:
    return _("an overdue was reported") if f.overdue else ""


def non_solicit_until(f: Facts) -> datetime.datetime | None:
    accepted = f.loan.referral.accepted_at
    if accepted is None:
        return None
    return accepted + datetime.timedelta(days=int(f.terms.get("non_solicit_days") or 0))


def _non_solicit(f: Facts) -> str:
    until = non_solicit_until(f)
    if until is None:
        return _("the application was never accepted")
    if f.now >= until:
        return ""
    return _("non-solicit period runs until %(date)s") % {"date": until.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")}


def _consent(f: Facts) -> str:
    consent = f.consent
    if consent.status != Consent.Status.GRANTED:
        return _("consent is %(status)s") % {"status": consent.status}
    if consent.expires_at is not None and consent.expires_at <= f.now:
        return _("consent expired")
    if "reclaim_offer" not in (consent.purposes or []):
        return _("consent lacks reclaim_offer")
    return ""


RULES: tuple[Rule, ...] = (
    Rule("contract_allows", gettext_lazy("Contract allows reclaims"), _contract_allows),
    Rule("loan_open", gettext_lazy("Loan still open"), _loan_open),
    Rule("ontime_installments", gettext_lazy("Enough instalments paid on time"), _ontime),
    Rule("no_overdue", gettext_lazy("No overdue ever reported"), _no_overdue),
    Rule("non_solicit_elapsed", gettext_lazy("Non-solicit period over"), _non_solicit),
    Rule("consent", gettext_lazy("Consent granted, unexpired, covering reclaim_offer"), _consent),
)


def failures(facts: Facts) -> list[tuple[str, str]]:
    """``[(rule code, why it fails), ...]`` in the active language (for screens); empty when the
    loan qualifies."""
    return [(rule.code, why) for rule in RULES if (why := rule.check(facts))]


def recorded_failures(facts: Facts) -> list[tuple[str, str]]:
    """The same, in English, for what is stored (status reasons, near misses, the timeline): data
    reads the same whichever language the scan, a worker or a reviewer's session happened to use,
    like the outbox's reasons; screens show the rule's translated label beside it."""
    with translation.override("en"):
        return failures(facts)


def loans_with_facts(loans=None):
    """Loans with what the rules need, in one query (repayments counted, overdues looked up)."""
    loans = Loan.objects.all() if loans is None else loans
    return loans.select_related("referral__contract", "referral__consent", "partner").annotate(
        ontime_count=Count("repayments", filter=Q(repayments__paid_date__lte=F("repayments__due_date"))),
        has_overdue=Exists(LoanOverdue.objects.filter(loan=OuterRef("pk"))),
    )


def facts_of(loan: Loan, now: datetime.datetime) -> Facts:
    return Facts(loan=loan, ontime=loan.ontime_count, overdue=loan.has_overdue, now=now)


def facts_for(loan_id: int, now: datetime.datetime) -> Facts:
    return facts_of(loans_with_facts(Loan.objects.filter(pk=loan_id)).get(), now)


def evidence(facts: Facts) -> dict:
    """What qualified the loan, kept with the case (dates in Asia/Shanghai)."""
    loan, consent = facts.loan, facts.consent
    repayments = list(
        loan.repayments.order_by("installment").values_list("installment", "due_date", "paid_date", "interest")
    )
    until = non_solicit_until(facts)
    return {
        "checked_at": facts.now.isoformat(),
        "contract": {"id": loan.referral.contract_id, "version": loan.referral.contract.version, **facts.terms},
        "loan": {"loan_id": loan.loan_id, "status": loan.status, "principal": str(loan.principal or "")},
        "ontime_installments": facts.ontime,
        "repayments": [
            {
                "installment": n,
                "due_date": due.isoformat(),
                "paid_date": paid.isoformat(),
                "on_time": paid <= due,
                "interest": str(interest),
            }
            for n, due, paid, interest in repayments
        ],
        "overdue_reported": facts.overdue,
        "accepted_at": loan.referral.accepted_at.isoformat() if loan.referral.accepted_at else None,
        "non_solicit_until": until.isoformat() if until else None,
        "consent": {
            "id": str(consent.pk),
            "status": consent.status,
            "purposes": consent.purposes,
            "expires_at": consent.expires_at.isoformat() if consent.expires_at else None,
        },
    }


# --- scanning -------------------------------------------------------------------------------------
@dataclass
class ScanResult:
    candidates: int = 0
    near_misses: int = 0
    blocked: int = 0
    reclaimed: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def reclaims_scan(*, now: datetime.datetime | None = None, chunk: int = 2000) -> ScanResult:
    """Find new candidates, record near misses (loans failing exactly one rule), block open cases
    whose rules stopped holding, and hand back acknowledged ones whose effective date came."""
    now = now or timezone.now()
    result = ScanResult()
    for reclaim in Reclaim.objects.filter(status__in=Reclaim.OPEN).only("pk").iterator(chunk_size=chunk):
        if recheck(reclaim.pk, now=now) is not None:
            result.blocked += 1
    result.reclaimed = reclaims_hand_back_due(now=now)

    unseen = loans_with_facts(
        Loan.objects.filter(status__in=OPEN_LOAN).exclude(Exists(Reclaim.objects.filter(loan=OuterRef("pk"))))
    ).order_by("pk")
    misses: list[ReclaimNearMiss] = []
    for loan in unseen.iterator(chunk_size=chunk):
        facts = facts_of(loan, now)
        failing = recorded_failures(facts)
        if not failing:
            _create_candidate(facts)
            result.candidates += 1
        elif len(failing) == 1:
            rule, why = failing[0]
            misses.append(
                ReclaimNearMiss(loan=loan, partner_id=loan.partner_id, rule=rule, detail=why[:300], checked_at=now)
            )
    with transaction.atomic():
        ReclaimNearMiss.objects.all().delete()
        ReclaimNearMiss.objects.bulk_create(misses, batch_size=chunk)
    result.near_misses = len(misses)
    return result


def _create_candidate(facts: Facts) -> Reclaim:
    loan = facts.loan
    with transaction.atomic():
        reclaim = Reclaim.objects.create(
            loan=loan, referral=loan.referral, partner_id=loan.partner_id, contract_id=loan.referral.contract_id,
            consent=facts.consent, evidence=evidence(facts),
        )  # fmt: skip
        ReclaimTransition.objects.create(
            reclaim=reclaim, source="", target=reclaim.status, note=gettext_noop("found by the scan")
        )
    return reclaim


# --- the review ---------------------------------------------------------------------------------------
def _locked(reclaim_id) -> Reclaim:
    consent_id = Reclaim.objects.filter(pk=reclaim_id).values_list("consent_id", flat=True).get()
    outbox.lock_consents(consent_id)  # consent → (dispatch) → reclaim
    return Reclaim.objects.select_for_update(no_key=True).select_related("loan", "partner").get(pk=reclaim_id)


def _move(reclaim: Reclaim, step: str, *, by=None, note: str = "", **fields) -> Reclaim:
    source = reclaim.status
    getattr(reclaim, step)()
    for name, value in fields.items():
        setattr(reclaim, name, value)
    reclaim.save()
    ReclaimTransition.objects.create(reclaim=reclaim, source=source, target=reclaim.status, by=by, note=note)
    return reclaim


def recheck(reclaim_id, *, now: datetime.datetime | None = None, by=None) -> str | None:
    """Check every rule again for an open case; block it (committed) when one fails. Returns why
    it was blocked, or ``None``."""
    now = now or timezone.now()
    with transaction.atomic():
        reclaim = _locked(reclaim_id)
        if reclaim.status not in Reclaim.OPEN:
            return None
        failing = recorded_failures(facts_for(reclaim.loan_id, now))
        if not failing:
            return None
        why = "; ".join(reason for _rule, reason in failing)
        _move(reclaim, "block", by=by, note=why, status_reason=why[:300])
        return why


def _checked(reclaim: Reclaim, actor) -> None:
    why = recheck(reclaim.pk, by=actor)
    if why is not None:
        raise ValidationError({"status": [_("The reclaim was blocked: %(why)s") % {"why": why}]})


def _reason(reason: str, field: str = "reason") -> str:
    reason = (reason or "").strip()
    if len(reason) < 4:
        raise ValidationError({field: [_("Give a reason (at least 4 characters).")]})
    return reason


def reclaim_propose(*, actor, reclaim: Reclaim, note: str = "") -> Reclaim:
    """Put a candidate in front of compliance (whoever proposes it cannot approve it)."""
    if not actor.has_perm("referrals.propose_reclaim"):
        raise PermissionDenied(_("Proposing reclaims needs the propose_reclaim permission."))
    _checked(reclaim, actor)
    with transaction.atomic():
        reclaim = _locked(reclaim.pk)
        _require(reclaim, Reclaim.Status.CANDIDATE)
        return _move(reclaim, "propose", by=actor, note=(note or "").strip(), proposed_by=actor)


def reclaim_approve(*, actor, reclaim: Reclaim, reason: str) -> Reclaim:
    """Compliance approves, with a reason; four-eyes against whoever proposed it. The notice is
    queued in the outbox in the same transaction."""
    if not actor.has_perm("referrals.approve_reclaim"):
        raise PermissionDenied(_("Approving reclaims needs the approve_reclaim permission."))
    reason = _reason(reason)
    _checked(reclaim, actor)
    with transaction.atomic():
        reclaim = _locked(reclaim.pk)
        _require(reclaim, *Reclaim.IN_REVIEW)
        if reclaim.proposed_by_id == actor.pk:
            raise PermissionDenied(_("Four-eyes: whoever proposed a reclaim cannot approve it."))
        now = timezone.now()
        effective = now.astimezone(SHANGHAI).date() + datetime.timedelta(days=settings.SPILLWAY_RECLAIM_EFFECTIVE_DAYS)
        reclaim = _move(
            reclaim, "approve", by=actor, note=reason, decided_by=actor, decided_at=now, effective_date=effective,
            status_reason="",
        )  # fmt: skip
        notice, _created = Dispatch.objects.get_or_create(
            kind=Dispatch.Kind.RECLAIM_NOTICE,
            idempotency_key=str(reclaim.pk),
            defaults={
                "partner_id": reclaim.partner_id, "consent_id": reclaim.consent_id, "referral_id": reclaim.referral_id,
                "subject_id": str(reclaim.pk), "next_attempt_at": now, "enqueued_at": now,
            },
        )  # fmt: skip
        outbox.enqueue_dispatches([notice])
        return reclaim


def reclaim_reject(*, actor, reclaim: Reclaim, reason: str) -> Reclaim:
    if not actor.has_perm("referrals.approve_reclaim"):
        raise PermissionDenied(_("Rejecting reclaims needs the approve_reclaim permission."))
    reason = _reason(reason)
    with transaction.atomic():
        reclaim = _locked(reclaim.pk)
        _require(reclaim, *Reclaim.OPEN)
        now = timezone.now()
        reclaim = _move(
            reclaim, "reject", by=actor, note=reason, decided_by=actor, decided_at=now, status_reason=reason[:300]
        )
        Dispatch.objects.filter(
            kind=Dispatch.Kind.RECLAIM_NOTICE, idempotency_key=str(reclaim.pk), status=Dispatch.Status.PENDING
        ).update(status=Dispatch.Status.CANCELLED, completed_at=now, last_error="reclaim rejected")
        return reclaim


def _require(reclaim: Reclaim, *allowed: str) -> None:
    if reclaim.status not in allowed:
        raise ValidationError(
            {"status": [_("This reclaim is %(status)s; that step is not possible now.") % {"status": reclaim.status}]}
        )


def reclaims_bulk(*, actor, reclaims: Iterable[Reclaim], decision: str, reason: str) -> dict[str, list]:
    """Approve or reject several cases with one reason; each is decided (or refused) on its own."""
    done, refused = [], []
    action = {"approve": reclaim_approve, "reject": reclaim_reject}[decision]
    for reclaim in reclaims:
        try:
            action(actor=actor, reclaim=reclaim, reason=reason)
        except (ValidationError, PermissionDenied) as exc:
            refused.append((reclaim, exc))
        else:
            done.append(reclaim)
    return {"done": done, "refused": refused}


def reclaims_block_for_loan(loan_id: int) -> None:
    """A loan went overdue (or ended): its open case is re-checked (and blocked) as soon as the
    callback's transaction commits; ``recheck`` takes the locks in the house order."""
    for reclaim_id in Reclaim.objects.filter(loan_id=loan_id, status__in=Reclaim.OPEN).values_list("pk", flat=True):
        transaction.on_commit(lambda rid=reclaim_id: recheck(rid))


def reclaims_block_for_consent(consent: Consent) -> None:
    """Called by the withdrawal with the consent locked: every open case under it is blocked."""
    why = f"consent is {consent.status}"  # stored: English, like every recorded reason
    for reclaim in Reclaim.objects.select_for_update(no_key=True).filter(consent=consent, status__in=Reclaim.OPEN):
        _move(reclaim, "block", note=why, status_reason=why)


# --- the notice (registered with the outbox) ------------------------------------------------------------
def notice_check(dispatch: Dispatch, consent: Consent, now: datetime.datetime) -> str:
    """Immediately before the notice leaves (consent locked): every rule again; the case moves to
    ``notified``, or is blocked and nothing is sent."""
    reclaim = Reclaim.objects.select_for_update(no_key=True).get(pk=dispatch.subject_id)
    if reclaim.status not in (Reclaim.Status.APPROVED, Reclaim.Status.NOTIFIED):
        return f"reclaim is {reclaim.status}"
    failing = recorded_failures(facts_for(reclaim.loan_id, now))
    if failing:
        why = "; ".join(reason for _rule, reason in failing)
        _move(reclaim, "block", note=why, status_reason=why[:300])
        return f"reclaim blocked: {why}"[:300]
    if reclaim.status == Reclaim.Status.APPROVED:
        _move(reclaim, "notify", notified_at=now)
    # else: a retry of the same notice (same idempotency key), checked again all the same
    return ""


def notice_payload(dispatch: Dispatch) -> dict:
    reclaim = Reclaim.objects.select_related("loan").get(pk=dispatch.subject_id)
    return {
        "reclaim_id": str(reclaim.pk),
        "referral_id": str(reclaim.referral_id),
        "loan_id": reclaim.loan.loan_id,
        "effective_date": reclaim.effective_date.isoformat(),
    }


def notice_acknowledged(dispatch: Dispatch, answer: NoticeAnswer) -> None:
    """The partner's answer: acknowledged → the fee line's moment, and the hand-back if due."""
    reclaim = Reclaim.objects.select_for_update(no_key=True).get(pk=dispatch.subject_id)
    if reclaim.status != Reclaim.Status.NOTIFIED:
        return
    if not answer.acknowledged:
        reclaim.status_reason = "the partner answered without acknowledging"
        reclaim.save(update_fields=["status_reason", "updated_at"])
        return
    now = timezone.now()
    _move(reclaim, "acknowledge", acknowledged_at=now, status_reason="")
    if reclaim.effective_date <= now.astimezone(SHANGHAI).date():
        _move(reclaim, "hand_back", reclaimed_at=now)


def reclaims_hand_back_due(*, now: datetime.datetime | None = None) -> int:
    now = now or timezone.now()
    today = now.astimezone(SHANGHAI).date()
    count = 0
    due = Reclaim.objects.filter(status=Reclaim.Status.ACKNOWLEDGED, effective_date__lte=today)
    for reclaim_id in due.values_list("pk", flat=True):
        with transaction.atomic():
            reclaim = _locked(reclaim_id)
            if reclaim.status == Reclaim.Status.ACKNOWLEDGED:
                _move(reclaim, "hand_back", reclaimed_at=now)
                count += 1
    return count


outbox.NOTICE_BUILDERS[Dispatch.Kind.RECLAIM_NOTICE] = notice_payload
outbox.NOTICE_CHECKS[Dispatch.Kind.RECLAIM_NOTICE] = notice_check
outbox.ON_SUCCESS[Dispatch.Kind.RECLAIM_NOTICE] = notice_acknowledged


def notice_failed(dispatch: Dispatch, error: str) -> None:
    """Every retry failed: the case stays ``notified`` (the partner may have read a notice that
    timed out) and says so; ``reclaim_retry_notice`` sends it again."""
    Reclaim.objects.filter(pk=dispatch.subject_id, status=Reclaim.Status.NOTIFIED).update(
        status_reason=f"notice failed: {error}"[:300], updated_at=timezone.now()
    )


outbox.ON_FAILURE[Dispatch.Kind.RECLAIM_NOTICE] = notice_failed


def reclaim_retry_notice(*, actor, reclaim: Reclaim) -> Reclaim:
    """Put a notice that failed for good back in the outbox, with its idempotency key."""
    if not actor.has_perm("referrals.propose_reclaim"):
        raise PermissionDenied(_("Retrying reclaim notices needs the propose_reclaim permission."))
    with transaction.atomic():
        reclaim = _locked(reclaim.pk)
        notice = (
            Dispatch.objects.select_for_update(no_key=True)
            .filter(kind=Dispatch.Kind.RECLAIM_NOTICE, idempotency_key=str(reclaim.pk))
            .first()
        )
        if reclaim.status != Reclaim.Status.NOTIFIED or notice is None or notice.status != Dispatch.Status.FAILED:
            raise ValidationError({"status": [_("Only a notified case whose notice failed can be retried.")]})
        now = timezone.now()
        Dispatch.objects.filter(pk=notice.pk).update(
            status=Dispatch.Status.PENDING, next_attempt_at=now, enqueued_at=now, attempts=0, last_error="",
            completed_at=None,
        )  # fmt: skip
        reclaim.status_reason = ""
        reclaim.save(update_fields=["status_reason", "updated_at"])
        ReclaimTransition.objects.create(
            reclaim=reclaim, source=reclaim.status, target=reclaim.status, by=actor, note=gettext_noop("notice retried")
        )
        outbox.enqueue_dispatches([notice])
        return reclaim


# --- hand-back ----------------------------------------------------------------------------------------
def reclaims_reveal(*, actor, reclaims: list[Reclaim]) -> None:
    """Record, in each borrower's consent ledger, that ``actor`` received their personal data in
    clear through the hand-back (before it is returned)."""
    with transaction.atomic():
        for reclaim in reclaims:
            ledger_append(
                consent=reclaim.consent, type=ConsentEvent.Type.PII_REVEALED,
                payload={"by": actor.get_username(), "fields": ["name", "national_id", "phone"],
                         "reason": "reclaim hand-back", "reclaim": str(reclaim.pk)},
            )  # fmt: skip
