"""Dispatch: getting probes, applications and notices to partners — nothing lost, nothing unconsented.

The ``Dispatch`` row is written before any call. A worker *claims* it in a short transaction that
locks the consent row (the same lock a withdrawal takes), re-checks that the consent still covers
this partner at this moment, records the provision in the ledger, and marks the row in flight
with a lease. Only then does the request leave. The answer is recorded in a second transaction.
A withdrawal cancels what is pending and waits for what is in flight before it returns.
"""

from __future__ import annotations

import datetime
import random
import time
from dataclasses import dataclass

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from partners import signing
from partners.circuit import circuit_admit, circuit_failure, circuit_success, rate_limit_wait
from partners.connectors import PermanentError, TransientError, connector_for
from partners.models import Partner
from partners.selectors import contract_in_force
from partners.terms import FIELD_CATEGORIES
from referrals.models import Consent, ConsentEvent, Dispatch, DispatchAttempt, Referral
from referrals.services.ledger import ledger_append

log = structlog.get_logger(__name__)
MAX_ATTEMPTS = 6  # the first try and five retries (30 s, 2 min, 10 min, 1 h, 6 h)
SENDS_DATA = (Dispatch.Kind.PROBE, Dispatch.Kind.APPLICATION)


@dataclass
class Claimed:
    """A dispatch this worker owns until its lease expires, with the exact request to send."""

    dispatch: Dispatch
    attempt: int
    payload: dict


# --- what may be sent ---------------------------------------------------------------------------
def send_refusal(consent: Consent, partner: Partner, now: datetime.datetime, *, purpose: str = "loan_referral") -> str:
    """Why personal data must not go to ``partner`` under ``consent`` right now ("" if it may)."""
    if consent.status != Consent.Status.GRANTED:
        return f"consent {consent.status}"
    if consent.expires_at <= now:
        return "consent expired"
    if purpose not in (consent.purposes or []):
        return f"consent does not cover the purpose {purpose}"
    if not consent.recipients.filter(partner_id=partner.pk).exists():
        return "partner not named in the consent"
    if partner.status != Partner.Status.ACTIVE:
        return f"partner {partner.status}"
    if contract_in_force(partner=partner, at=now) is None:
        return "no contract in force"
    return ""


def allowed_fields(contract_fields: list[str], consent: Consent) -> list[str]:
    """The contract's fields that the consent's data categories cover (data minimisation)."""
    return [f for f in contract_fields if FIELD_CATEGORIES.get(f) in set(consent.data_categories or [])]


def probe_payload(referral: Referral, consent: Consent) -> dict:
    """Hashes only, and only what the consent covers. No clear personal data, no credit data."""
    applicant, partner = referral.applicant, referral.partner
    payload: dict = {"referral_id": str(referral.pk), "hash_alg": partner.phone_hash}
    categories = set(consent.data_categories or [])
    if "contact" in categories:
        payload["phone_hash"] = signing.phone_hash(applicant.phone, partner.phone_hash, partner.api_secret)
    if "location" in categories:
        payload["province"] = applicant.province
    if "loan_request" in categories:
        payload["requested_amount"] = f"{applicant.requested_amount:.2f}"
        payload["requested_term_months"] = applicant.requested_term_months
    return payload


def application_payload(referral: Referral, consent: Consent) -> tuple[dict, list[str]]:
    """The application: only fields the contract lists *and* the consent covers. Never credit data."""
    applicant = referral.applicant
    fields = allowed_fields(referral.contract.data_fields, consent)
    values = {}
    for name in fields:
        value = getattr(applicant, name)
        if name in ("requested_amount", "monthly_income") and value is not None:
            value = f"{value:.2f}"
        elif name == "expected_apr" and value is not None:
            value = f"{value:.4f}"
        values[name] = value
    body = {
        "referral_id": str(referral.pk),
        "applicant": values,
        "consent": {
            "id": str(consent.pk),
            "text_code": consent.text.code,
            "granted_at": consent.granted_at.isoformat(),
            "expires_at": consent.expires_at.isoformat(),
        },
    }
    return body, fields


# --- claim ------------------------------------------------------------------------------------------
def dispatch_claim(dispatch_id: int, *, now: datetime.datetime | None = None) -> Claimed | None:
    """Take a due dispatch for this worker, or ``None`` (not due, taken, cancelled, deferred or refused)."""
    now = now or timezone.now()
    consent_id = Dispatch.objects.filter(pk=dispatch_id).values_list("consent_id", flat=True).first()
    if consent_id is None:
        return None
    with transaction.atomic():
        # The lock a withdrawal takes, taken first (see lock_consents): from here to the commit,
        # the consent cannot change under us.
        lock_consents(consent_id)
        dispatch = (
            # of=("self",): lock the dispatch row only; PostgreSQL refuses FOR UPDATE on the nullable
            # side of the outer join that the optional referral needs.
            Dispatch.objects.select_for_update(of=("self",), no_key=True)
            .select_related("partner", "referral__applicant", "referral__contract", "referral__partner")
            .filter(pk=dispatch_id)
            .first()
        )
        if dispatch is None or dispatch.status != Dispatch.Status.PENDING or dispatch.next_attempt_at > now:
            return None
        consent = Consent.objects.select_related("text").get(pk=dispatch.consent_id)  # locked above
        partner = dispatch.partner
        if dispatch.kind in SENDS_DATA:
            refusal = send_refusal(consent, partner, now)
            if refusal:
                _refuse(dispatch, refusal, now)
                return None
        check = NOTICE_CHECKS.get(dispatch.kind)
        if check is not None:
            refusal = check(dispatch, consent, now)
            if refusal:
                _refuse(dispatch, refusal, now)
                return None
        if partner.paused:
            _defer(dispatch, now + datetime.timedelta(seconds=30), "partner paused")
            return None
        retry_at = circuit_admit(partner.pk, now=now)
        if retry_at is not None:
            _defer(dispatch, retry_at, "circuit open")
            return None

        attempt = dispatch.attempts + 1
        payload, event_type, event_payload = _request(dispatch, consent, attempt)
        if event_type:
            # Written before the bytes leave: the ledger never misses a provision of data.
            ledger_append(consent=consent, type=event_type, payload=event_payload, occurred_at=now)
        lease = now + datetime.timedelta(
            milliseconds=partner.timeout_ms, seconds=settings.SPILLWAY_DISPATCH_LEASE_MARGIN_SECONDS
        )
        Dispatch.objects.filter(pk=dispatch.pk).update(
            status=Dispatch.Status.IN_FLIGHT, attempts=attempt, lease_expires_at=lease
        )
        dispatch.status, dispatch.attempts, dispatch.lease_expires_at = Dispatch.Status.IN_FLIGHT, attempt, lease
        _mark_referral_sending(dispatch, now)
        return Claimed(dispatch, attempt, payload)


def lock_consents(consent_id) -> None:
    """Lock the consents of the applicant that ``consent_id`` belongs to, in primary-key order.

    Every transaction that changes dispatches or referrals takes this lock first — the withdrawal
    (its one consent), the claim, the recording of an answer, the selection — so locks are always
    taken in the order consent → dispatch → referral and two of them cannot deadlock (a dispatch
    row locked before its consent, or an application row inserted under a referral lock, whose
    foreign-key check needs the consent row a withdrawal holds, did).

    Row locks here and in the other services are ``FOR NO KEY UPDATE`` (``no_key=True``): they
    exclude each other as ``FOR UPDATE`` does, but not the ``KEY SHARE`` lock a foreign-key check
    takes when a row pointing at the locked one is inserted — a callback stored for a referral
    while a worker held that referral's lock closed a three-way deadlock (found by ``make chaos``)."""
    same_applicant = Consent.objects.filter(pk=consent_id).values("applicant_id")
    list(
        Consent.objects.select_for_update(no_key=True)
        .filter(applicant_id__in=same_applicant)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _request(dispatch: Dispatch, consent: Consent, attempt: int) -> tuple[dict, str, dict]:
    """The request body, and the ledger event that records it (type, payload)."""
    referral, partner = dispatch.referral, dispatch.partner
    base = {"partner": partner.code, "dispatch": dispatch.pk, "attempt": attempt}
    if dispatch.kind == Dispatch.Kind.PROBE:
        payload = probe_payload(referral, consent)
        fields = sorted(set(payload) - {"referral_id", "hash_alg"})
        return payload, ConsentEvent.Type.PROBE_SENT, {
            **base, "referral": str(referral.pk), "contract": referral.contract_id,
            "contract_version": referral.contract.version, "fields": fields, "hash_alg": partner.phone_hash,
        }  # fmt: skip
    if dispatch.kind == Dispatch.Kind.APPLICATION:
        payload, fields = application_payload(referral, consent)
        return payload, ConsentEvent.Type.APPLICATION_SENT, {
            **base, "referral": str(referral.pk), "contract": referral.contract_id,
            "contract_version": referral.contract.version, "fields": fields,
        }  # fmt: skip
    if dispatch.kind == Dispatch.Kind.WITHDRAWAL_NOTICE:
        payload = {
            "consent_id": str(consent.pk),
            "referral_id": str(referral.pk) if referral else None,
            "withdrawn_at": (consent.withdrawn_at or timezone.now()).isoformat(),
        }
        return payload, ConsentEvent.Type.WITHDRAWAL_NOTICE_SENT, base
    # Reclaim notices: the reclaim code supplies the body through a registered builder.
    builder = NOTICE_BUILDERS[dispatch.kind]
    payload = builder(dispatch)
    return payload, ConsentEvent.Type.RECLAIM_NOTICE_SENT, {**base, "reclaim": dispatch.subject_id}


NOTICE_BUILDERS: dict = {}  # kind → callable(dispatch) -> payload (reclaims register here)
ON_SUCCESS: dict = {}  # kind → callable(dispatch, answer) (reclaims register here)
# kind → callable(dispatch, consent, now) -> refusal ("" to send), run in the claim with the consent
# locked: the reclaim rules are checked here, immediately before the notice leaves.
NOTICE_CHECKS: dict = {}
ON_FAILURE: dict = {}  # kind → callable(dispatch, error) when a call failed for good (reclaims register here)


def _mark_referral_sending(dispatch: Dispatch, now) -> None:
    if dispatch.referral_id is None:
        return
    if dispatch.kind == Dispatch.Kind.PROBE:
        Referral.objects.filter(pk=dispatch.referral_id, status=Referral.Status.QUEUED).update(
            status=Referral.Status.PROBING, updated_at=now
        )
    elif dispatch.kind == Dispatch.Kind.APPLICATION:
        Referral.objects.filter(pk=dispatch.referral_id, submitted_at__isnull=True).update(submitted_at=now)


def _refuse(dispatch: Dispatch, reason: str, now) -> None:
    Dispatch.objects.filter(pk=dispatch.pk).update(
        status=Dispatch.Status.CANCELLED, last_error=reason, completed_at=now
    )
    DispatchAttempt.objects.create(
        dispatch=dispatch, number=dispatch.attempts + 1, started_at=now, outcome=DispatchAttempt.Outcome.REFUSED,
        error=reason,
    )  # fmt: skip
    if dispatch.referral_id:
        Referral.objects.filter(pk=dispatch.referral_id, status__in=Referral.OPEN).update(
            status=Referral.Status.CANCELLED, status_reason=reason[:200], updated_at=now
        )


def _defer(dispatch: Dispatch, until, reason: str) -> None:
    Dispatch.objects.filter(pk=dispatch.pk, status=Dispatch.Status.PENDING).update(
        next_attempt_at=until, enqueued_at=None, last_error=reason
    )


# --- send and record ---------------------------------------------------------------------------------
def dispatch_send(dispatch_id: int) -> str:
    """Claim, call the partner, record the answer. Returns what happened (for logs and tests)."""
    claimed = dispatch_claim(dispatch_id)
    if claimed is None:
        return "skipped"
    dispatch = claimed.dispatch
    partner = dispatch.partner
    started = timezone.now()
    clock = time.monotonic()
    if not rate_limit_wait(partner.pk, partner.max_requests_per_second):
        return _record(
            claimed, started, 0, None, TransientError("rate limit: no slot", reason="rate_limited"), count_failure=False
        )
    connector = connector_for(partner)
    try:
        if dispatch.kind == Dispatch.Kind.PROBE:
            answer = connector.probe(claimed.payload)
        elif dispatch.kind == Dispatch.Kind.APPLICATION:
            answer = connector.submit_application(claimed.payload, idempotency_key=dispatch.idempotency_key)
        elif dispatch.kind == Dispatch.Kind.WITHDRAWAL_NOTICE:
            answer = connector.notify_withdrawal(claimed.payload, idempotency_key=dispatch.idempotency_key)
        else:
            answer = connector.notify_reclaim(claimed.payload, idempotency_key=dispatch.idempotency_key)
    except (TransientError, PermanentError) as error:
        outcome = _record(claimed, started, _ms(clock), None, error)
    else:
        outcome = _record(claimed, started, _ms(clock), answer, None)
    # Ids, codes and timings only: never a payload (it may hold personal data).
    log.info(
        "dispatch", dispatch=dispatch.pk, kind=dispatch.kind, partner=partner.code, attempt=claimed.attempt,
        outcome=outcome, ms=_ms(clock),
    )  # fmt: skip
    return outcome


def _ms(clock: float) -> int:
    return int((time.monotonic() - clock) * 1000)


def _backoff(attempt: int) -> datetime.timedelta:
    schedule = settings.SPILLWAY_RETRY_BACKOFF_SECONDS
    base = schedule[min(attempt - 1, len(schedule) - 1)]
    return datetime.timedelta(seconds=base * random.uniform(0.8, 1.2))  # noqa: S311  (jitter, not crypto)


def _record(claimed: Claimed, started, duration_ms: int, answer, error, *, count_failure: bool = True) -> str:
    dispatch, attempt = claimed.dispatch, claimed.attempt
    now = timezone.now()
    status_code = getattr(answer, "status", None) or getattr(error, "status", None)
    with transaction.atomic():
        lock_consents(dispatch.consent_id)  # first, as everywhere (the selection below needs it too)
        current = Dispatch.objects.select_for_update(no_key=True).get(pk=dispatch.pk)
        DispatchAttempt.objects.create(
            dispatch=dispatch, number=attempt, started_at=started, duration_ms=duration_ms, http_status=status_code,
            outcome=(DispatchAttempt.Outcome.SUCCESS if error is None else
                     DispatchAttempt.Outcome.PERMANENT if isinstance(error, PermanentError) else
                     DispatchAttempt.Outcome.TRANSIENT),
            error=str(error)[:300] if error else "",
        )  # fmt: skip
        if current.status != Dispatch.Status.IN_FLIGHT or current.attempts != attempt:
            # Our lease ran out and the sweeper handed the row on (or a withdrawal cancelled it):
            # the attempt is on record, the state belongs to whoever holds the row now.
            return "stale"
        if error is None:
            Dispatch.objects.filter(pk=dispatch.pk).update(
                status=Dispatch.Status.SUCCEEDED, completed_at=now, lease_expires_at=None, last_error="",
                result=_answer_dict(answer),
            )  # fmt: skip
            circuit_success(dispatch.partner_id)
            _apply_answer(dispatch, answer, now)
            return "succeeded"
        if isinstance(error, TransientError) and attempt < MAX_ATTEMPTS:
            if count_failure:
                circuit_failure(dispatch.partner_id, str(error), now=now)
            Dispatch.objects.filter(pk=dispatch.pk).update(
                status=Dispatch.Status.PENDING, next_attempt_at=now + _backoff(attempt), enqueued_at=None,
                lease_expires_at=None, last_error=str(error)[:300],
            )  # fmt: skip
            return "retry"
        if isinstance(error, TransientError) and count_failure:
            circuit_failure(dispatch.partner_id, str(error), now=now)
        Dispatch.objects.filter(pk=dispatch.pk).update(
            status=Dispatch.Status.FAILED, completed_at=now, lease_expires_at=None, last_error=str(error)[:300]
        )
        _fail_referral(dispatch, str(error), now)
        if dispatch.kind in ON_FAILURE:
            ON_FAILURE[dispatch.kind](dispatch, str(error))
        return "failed"


def _answer_dict(answer) -> dict:
    return {k: v for k, v in answer.__dict__.items() if k in ("decision", "reason", "application_id", "acknowledged")}


def _apply_answer(dispatch: Dispatch, answer, now) -> None:
    from referrals.services.selection import referral_select

    if dispatch.kind == Dispatch.Kind.PROBE:
        accepted = answer.decision == "accept"
        waiting = (Referral.Status.QUEUED, Referral.Status.PROBING)
        Referral.objects.filter(pk=dispatch.referral_id, status__in=waiting).update(
            status=Referral.Status.PROBE_ACCEPTED if accepted else Referral.Status.PROBE_DECLINED,
            status_reason="" if accepted else (answer.reason or "declined")[:200],
            probe_answered_at=now, updated_at=now,
        )  # fmt: skip
        referral_select(dispatch.referral.applicant_id, now=now)
    elif dispatch.kind == Dispatch.Kind.APPLICATION:
        from referrals.services.callbacks import referral_application_decided

        referral_application_decided(
            dispatch.referral_id, decision=answer.decision, application_id=answer.application_id,
            reason=answer.reason, at=now,
        )  # fmt: skip
    elif dispatch.kind == Dispatch.Kind.WITHDRAWAL_NOTICE:
        ledger_append(
            consent=dispatch.consent, type=ConsentEvent.Type.WITHDRAWAL_ACKNOWLEDGED,
            payload={"partner": dispatch.partner.code, "dispatch": dispatch.pk}, occurred_at=now,
        )  # fmt: skip
    elif dispatch.kind in ON_SUCCESS:
        ON_SUCCESS[dispatch.kind](dispatch, answer)


def _fail_referral(dispatch: Dispatch, reason: str, now) -> None:
    if dispatch.referral_id is None or dispatch.kind not in SENDS_DATA:
        return
    from referrals.services.selection import referral_select

    Referral.objects.filter(pk=dispatch.referral_id, status__in=Referral.OPEN).update(
        status=Referral.Status.FAILED, status_reason=reason[:200], updated_at=now
    )
    referral_select(dispatch.referral.applicant_id, now=now)


# --- withdrawal -----------------------------------------------------------------------------------
def cancel_for_consent(consent: Consent) -> list:
    """Called by the withdrawal (and expiry) with the consent row locked: cancel every pending
    probe and application and every open referral. Returns the cancelled referral ids."""
    now = timezone.now()
    Dispatch.objects.filter(consent=consent, kind__in=SENDS_DATA, status=Dispatch.Status.PENDING).update(
        status=Dispatch.Status.CANCELLED, completed_at=now, last_error=f"consent {consent.status}"
    )
    open_referrals = list(
        Referral.objects.filter(consent=consent, status__in=Referral.OPEN).values_list("pk", flat=True)
    )
    Referral.objects.filter(pk__in=open_referrals).update(
        status=Referral.Status.CANCELLED, status_reason=f"consent {consent.status}", updated_at=now
    )
    return open_referrals


def wait_for_in_flight(consent: Consent, *, poll: float = 0.05) -> None:
    """Block until no probe or application under ``consent`` is in flight (or its lease ran out:
    a dead worker sends nothing more). Bounded by the partners' timeouts plus the lease margin."""
    while True:
        now = timezone.now()
        busy = Dispatch.objects.filter(
            consent=consent, kind__in=SENDS_DATA, status=Dispatch.Status.IN_FLIGHT, lease_expires_at__gt=now
        ).exists()
        if not busy:
            return
        time.sleep(poll)


def withdrawal_notices(consent: Consent) -> list[Dispatch]:
    """Queue a withdrawal notice for every partner that received this person's data under the consent.

    "Received" is what the ledger says: a probe or an application was sent (the event is written
    before the bytes leave), whatever became of the call. A call that timed out or got a 5xx may
    well have been read by the partner, and such a dispatch is left pending (or cancelled by the
    withdrawal) with the data already out — its status cannot tell."""
    now = timezone.now()
    provided = (
        ConsentEvent.objects.filter(
            consent=consent, type__in=(ConsentEvent.Type.PROBE_SENT, ConsentEvent.Type.APPLICATION_SENT)
        )
        .order_by("seq")
        .values_list("payload", flat=True)
    )
    per_partner: dict = {}
    for payload in provided:
        per_partner.setdefault(payload["partner"], payload.get("referral"))
    notices = []
    with transaction.atomic():
        for code, referral_id in per_partner.items():
            partner = Partner.objects.get(code=code)
            notice, created = Dispatch.objects.get_or_create(
                kind=Dispatch.Kind.WITHDRAWAL_NOTICE,
                idempotency_key=f"{consent.pk}:{partner.code}",
                defaults={
                    "partner": partner,
                    "consent": consent,
                    "referral_id": referral_id,
                    "next_attempt_at": now,
                    "enqueued_at": now,
                },
            )
            if created:
                notices.append(notice)
        ids = [n.pk for n in notices]
        if ids:
            transaction.on_commit(lambda: _enqueue(ids))
    return notices


def _enqueue(ids: list[int]) -> None:
    from config.celery import enqueue
    from referrals.tasks import dispatch_send_task

    enqueue(dispatch_send_task, ids)


def enqueue_dispatches(dispatches: list[Dispatch]) -> None:
    """Send the ids to a worker once the current transaction commits."""
    ids = [d.pk for d in dispatches]
    if ids:
        transaction.on_commit(lambda: _enqueue(ids))


# --- sweeper ------------------------------------------------------------------------------------------
def dispatch_sweep(*, now: datetime.datetime | None = None, limit: int = 5000, budget_seconds: float = 30) -> dict:
    """Re-enqueue what a lost message or a dead worker left behind; close probe windows.

    - in flight with an expired lease → pending again (the attempt counts; the partner sees the
      same idempotency key);
    - pending and due but not enqueued since it became due (or enqueued long ago) → enqueue.
    """
    from referrals.services.selection import referral_select_due

    now = now or timezone.now()
    grace = now - datetime.timedelta(seconds=settings.SPILLWAY_SWEEP_GRACE_SECONDS)
    expired = Dispatch.objects.filter(status=Dispatch.Status.IN_FLIGHT, lease_expires_at__lt=now).update(
        status=Dispatch.Status.PENDING, next_attempt_at=now, enqueued_at=None, lease_expires_at=None,
        last_error="lease expired (worker lost)",
    )  # fmt: skip
    from referrals.tasks import dispatch_send_task

    # Batches of ``limit`` until none is left or the time budget is spent: after a mass failure
    # (30,000 leases expiring at once) the backlog goes out in this sweep, not over six beats.
    enqueued, deadline = 0, time.monotonic() + budget_seconds
    while True:
        due = list(
            Dispatch.objects.filter(status=Dispatch.Status.PENDING, next_attempt_at__lte=now)
            .filter(_not_recently_enqueued(grace))
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        if due:
            Dispatch.objects.filter(pk__in=due).update(enqueued_at=now)
            for start in range(0, len(due), 50):
                dispatch_send_task.delay(due[start : start + 50])
            enqueued += len(due)
        if len(due) < limit or time.monotonic() > deadline:
            break
    closed = referral_select_due(now=now)
    return {"lease_expired": expired, "enqueued": enqueued, "probe_windows_closed": closed}


def _not_recently_enqueued(grace) -> Q:
    """Never enqueued, enqueued before it became due (a retry), or enqueued so long ago that the
    message must be lost. Re-sending a message that was not lost is harmless: claims are conditional."""
    return Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=grace) | Q(enqueued_at__lt=F("next_attempt_at"))
