"""Reclaims (回捞): every eligibility rule on its boundary, the review with four-eyes, the notice
through the outbox (re-checked immediately before it leaves, retried with one idempotency key),
the fee line, and the hand-back to origination with each unmasked read recorded.

Loans come from the real pipeline: intake → probe/application answered by the partner (stubbed at
the HTTP boundary) → signed callbacks for acceptance, loan and repayments."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal

import pytest
import responses

from referrals.models import Consent, ConsentEvent, Dispatch, Loan, Reclaim, ReclaimNearMiss
from referrals.services.consents import consent_withdraw
from referrals.services.dispatch import dispatch_send
from referrals.services.reclaims import reclaim_approve, reclaim_propose, reclaim_reject, reclaims_scan
from settlements.services.statements import statement_compute
from tests.factories import PartnerFactory, UserFactory, make_contract
from tests.settlements.builders import PartnerSide, at, submitting

TERMS = {"allowed": True, "min_ontime_installments": 3, "fee": "200.00", "non_solicit_days": 90}
ACCEPTED = at(1, 9, month=7)  # 2026-07-01 09:00 Shanghai
AFTER_NON_SOLICIT = ACCEPTED + datetime.timedelta(days=90)


@pytest.fixture
def partner(db):
    return PartnerFactory(code="PARTNER_A")


@pytest.fixture
def contract(partner, partnership_manager, compliance_officer):
    return make_contract(partner, drafter=partnership_manager, approver=compliance_officer, reclaim=TERMS)


@pytest.fixture
def text(compliance_officer):
    from tests.factories import consent_text

    return consent_text(actor=compliance_officer)


@pytest.fixture
def side(client, partner):
    return PartnerSide(client, partner)


@pytest.fixture
def borrower(contract, api, origination, text, partner, side):
    """An accepted referral with a disbursed loan and three instalments paid on their due dates."""
    (referral,) = submitting(api(origination), text, partner, 1)
    side.accepted(referral, ACCEPTED)
    side.approved(referral, at(2, 9, month=7), "L-1")
    side.disbursed(referral, at(3, 9, month=7), "L-1", "12000.00", first_due_date="2026-08-03")
    for n, month in enumerate((8, 9, 10), start=1):
        due = datetime.date(2026, month, 3)
        side.repaid(referral, at(3, 9, month=month), "L-1", n, "120.00", due=due, paid=due)
    referral.refresh_from_db()
    return referral


def scan(now=AFTER_NON_SOLICIT):
    return reclaims_scan(now=now)


def near_miss() -> tuple[str, str] | None:
    miss = ReclaimNearMiss.objects.first()
    return (miss.rule, miss.detail) if miss else None


# --- eligibility ------------------------------------------------------------------------------------
def test_a_qualifying_loan_becomes_one_candidate_with_its_evidence(borrower):
    assert scan().candidates == 1
    reclaim = Reclaim.objects.get()
    assert (reclaim.status, reclaim.referral_id, reclaim.contract_id) == (
        "candidate",
        borrower.pk,
        borrower.contract_id,
    )
    assert reclaim.evidence["ontime_installments"] == 3
    assert [r["on_time"] for r in reclaim.evidence["repayments"]] == [True, True, True]
    assert "reclaim_offer" in reclaim.evidence["consent"]["purposes"]
    assert reclaim.transitions.get().target == "candidate"
    assert scan().candidates == 0  # found once
    assert Reclaim.objects.count() == 1


def test_the_non_solicit_period_ends_exactly_after_its_days(borrower):
    result = scan(now=AFTER_NON_SOLICIT - datetime.timedelta(seconds=1))
    assert (result.candidates, near_miss()[0]) == (0, "non_solicit_elapsed")
    assert scan(now=AFTER_NON_SOLICIT).candidates == 1


def test_exactly_the_required_instalments_on_time_qualify_and_one_fewer_does_not(borrower, side):
    Loan.objects.get().repayments.filter(installment=3).delete()
    scan()
    assert near_miss() == ("ontime_installments", "2 of 3 instalments paid on time")
    side.repaid(borrower, at(3, 9, month=10), "L-1", 3, "120.00", due=datetime.date(2026, 10, 3))
    assert scan().candidates == 1


def test_a_repayment_a_day_late_does_not_count_as_on_time(borrower, side):
    loan = Loan.objects.get()
    loan.repayments.filter(installment=3).delete()
    side.repaid(
        borrower,
        at(4, 9, month=10),
        "L-1",
        3,
        "120.00",
        due=datetime.date(2026, 10, 3),
        paid=datetime.date(2026, 10, 4),
    )
    scan()
    assert near_miss() == ("ontime_installments", "2 of 3 instalments paid on time")


def test_any_overdue_report_disqualifies(borrower, side):
    side.overdue(borrower, at(10, 9, month=9), "L-1", 3, installment=2, due="2026-09-07")
    scan()
    assert near_miss() == ("no_overdue", "an overdue was reported")


@pytest.mark.parametrize("event", ["loan.closed", "loan.defaulted"])
def test_the_loan_must_still_be_open(borrower, side, event):
    from referrals.services.reclaims import facts_for, recorded_failures

    side.send(event, borrower, at(20, 9, month=10), loan_id="L-1")
    assert scan().candidates == 0  # ended loans are not even looked at
    loan = Loan.objects.get()
    assert recorded_failures(facts_for(loan.pk, AFTER_NON_SOLICIT)) == [("loan_open", f"the loan is {loan.status}")]


def test_the_routing_contract_version_must_allow_reclaims(
    partner, partnership_manager, compliance_officer, api, origination, text, side
):
    make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer, reclaim={**TERMS, "allowed": False}
    )
    (referral,) = submitting(api(origination), text, partner, 1)
    side.accepted(referral, ACCEPTED)
    side.disbursed(referral, at(3, 9, month=7), "L-9", "1000.00")
    for n in (1, 2, 3):
        side.repaid(referral, at(3, 9, month=7 + n), "L-9", n, "10.00", due=datetime.date(2026, 7 + n, 3))
    scan()
    assert near_miss()[0] == "contract_allows"


def test_a_later_contract_version_does_not_change_what_the_referral_was_routed_under(
    borrower, partner, partnership_manager, compliance_officer
):
    make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer, reclaim={"allowed": False},
        effective_from=datetime.date(2026, 12, 1),
    )  # fmt: skip
    assert scan().candidates == 1


def test_the_consent_must_cover_reclaim_offer(borrower):
    Consent.objects.update(purposes=["loan_referral"])
    scan()
    assert near_miss() == ("consent", "consent lacks reclaim_offer")


def test_an_expired_consent_disqualifies_from_the_moment_it_expires(borrower):
    Consent.objects.update(expires_at=AFTER_NON_SOLICIT)
    scan()
    assert near_miss() == ("consent", "consent expired")
    Consent.objects.update(expires_at=AFTER_NON_SOLICIT + datetime.timedelta(seconds=1))
    assert scan().candidates == 1


def test_a_withdrawn_consent_disqualifies(borrower, origination):
    consent_withdraw(actor=origination, consent=borrower.consent, channel="app")
    scan()
    assert near_miss()[0] == "consent"


def test_loans_failing_several_rules_are_not_near_misses(borrower, side):
    Consent.objects.update(purposes=["loan_referral"])
    side.overdue(borrower, at(10, 9, month=9), "L-1", 3, installment=2, due="2026-09-07")
    assert scan().near_misses == 0


# --- the review --------------------------------------------------------------------------------------
@pytest.fixture
def candidate(borrower):
    scan()
    return Reclaim.objects.get()


def test_compliance_approves_with_a_reason_and_the_notice_is_queued(candidate, compliance_officer):
    reclaim = reclaim_approve(actor=compliance_officer, reclaim=candidate, reason="repays well, consent covers it")
    assert (reclaim.status, reclaim.decided_by) == ("approved", compliance_officer)
    notice = Dispatch.objects.get(kind="reclaim_notice")
    assert (notice.idempotency_key, notice.subject_id, notice.status) == (str(reclaim.pk),) * 2 + ("pending",)
    assert [t.target for t in reclaim.transitions.order_by("at", "id")] == ["candidate", "approved"]


def test_a_reason_is_required(candidate, compliance_officer):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        reclaim_approve(actor=compliance_officer, reclaim=candidate, reason=" ")
    assert "reason" in refused.value.message_dict
    assert Reclaim.objects.get().status == "candidate"


def test_four_eyes_the_proposer_cannot_approve(candidate, operations_user, compliance_officer):
    from django.core.exceptions import PermissionDenied

    proposed = reclaim_propose(actor=operations_user, reclaim=candidate, note="good payer")
    assert (proposed.status, proposed.proposed_by) == ("under_review", operations_user)
    with pytest.raises(PermissionDenied):
        reclaim_approve(actor=operations_user, reclaim=proposed, reason="I say so")  # no approve permission
    both = UserFactory(username="both-roles", roles=["operations", "compliance_officer"])
    other = Reclaim.objects.get()
    Reclaim.objects.filter(pk=other.pk).update(proposed_by=both)
    with pytest.raises(PermissionDenied):
        reclaim_approve(actor=both, reclaim=other, reason="my own proposal")
    assert reclaim_approve(actor=compliance_officer, reclaim=other, reason="checked").status == "approved"


def test_each_step_rechecks_the_rules_and_blocks(candidate, compliance_officer):
    from django.core.exceptions import ValidationError

    Consent.objects.update(purposes=["loan_referral"])
    with pytest.raises(ValidationError) as refused:
        reclaim_approve(actor=compliance_officer, reclaim=candidate, reason="looks fine")
    assert "consent lacks reclaim_offer" in refused.value.message_dict["status"][0]
    reclaim = Reclaim.objects.get()
    assert (reclaim.status, reclaim.status_reason) == ("blocked", "consent lacks reclaim_offer")
    assert not Dispatch.objects.filter(kind="reclaim_notice").exists()


def test_reject_with_a_reason(candidate, compliance_officer):
    reclaim = reclaim_reject(actor=compliance_officer, reclaim=candidate, reason="partner relationship")
    assert (reclaim.status, reclaim.status_reason) == ("rejected", "partner relationship")


# --- the notice --------------------------------------------------------------------------------------
@pytest.fixture
def approved(candidate, compliance_officer):
    return reclaim_approve(actor=compliance_officer, reclaim=candidate, reason="repays well")


def notice() -> Dispatch:
    return Dispatch.objects.get(kind="reclaim_notice")


def test_the_acknowledged_notice_hands_the_borrower_back_and_bills_the_fee_once(approved, partner, finance_user):
    with responses.RequestsMock() as http:
        http.add(responses.POST, f"{partner.api_base_url}/reclaims", json={"acknowledged": True})
        assert dispatch_send(notice().pk) == "succeeded"
        sent = http.calls[0].request
    body = json.loads(sent.body)
    assert body == {
        "reclaim_id": str(approved.pk), "referral_id": str(approved.referral_id), "loan_id": "L-1",
        "effective_date": approved.effective_date.isoformat(),
    }  # fmt: skip
    assert sent.headers["Idempotency-Key"] == str(approved.pk)
    reclaim = Reclaim.objects.get()
    assert reclaim.status == "reclaimed"
    assert [t.target for t in reclaim.transitions.order_by("at", "id")] == [
        "candidate", "approved", "notified", "acknowledged", "reclaimed"
    ]  # fmt: skip
    events = ConsentEvent.objects.filter(consent=approved.consent, type="reclaim_notice_sent")
    assert [e.payload["reclaim"] for e in events] == [str(approved.pk)]

    from settlements import periods

    period = periods.of(reclaim.acknowledged_at)
    statement, _ = statement_compute(partner=partner, period=period, user=finance_user)
    fee = statement.lines.get(line_type="reclaim_fee")
    assert (fee.amount, fee.contract_id, fee.loan_id) == (Decimal("-200.00"), approved.contract_id, approved.loan_id)
    statement_compute(partner=partner, period=period, user=finance_user)
    assert statement.lines.filter(line_type="reclaim_fee").count() == 1


def test_the_fee_is_the_routing_versions_even_after_a_new_version(
    approved, partner, partnership_manager, compliance_officer, finance_user
):
    make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer, reclaim={**TERMS, "fee": "999.00"},
        effective_from=datetime.date(2026, 11, 2),
    )  # fmt: skip
    with responses.RequestsMock() as http:
        http.add(responses.POST, f"{partner.api_base_url}/reclaims", json={"acknowledged": True})
        dispatch_send(notice().pk)
    from settlements import periods

    reclaim = Reclaim.objects.get()
    statement, _ = statement_compute(partner=partner, period=periods.of(reclaim.acknowledged_at), user=finance_user)
    assert statement.lines.get(line_type="reclaim_fee").amount == Decimal("-200.00")


def test_the_notice_is_retried_until_acknowledged_with_one_idempotency_key(approved, partner):
    with responses.RequestsMock() as http:
        http.add(responses.POST, f"{partner.api_base_url}/reclaims", status=503, json={"error": "busy"})
        http.add(responses.POST, f"{partner.api_base_url}/reclaims", json={"acknowledged": False})
        http.add(responses.POST, f"{partner.api_base_url}/reclaims", json={"acknowledged": True})
        assert dispatch_send(notice().pk) == "retry"
        assert Reclaim.objects.get().status == "notified"
        Dispatch.objects.update(next_attempt_at=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        assert dispatch_send(notice().pk) == "retry"  # answered, but not acknowledged
        Dispatch.objects.update(next_attempt_at=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        assert dispatch_send(notice().pk) == "succeeded"
        keys = [call.request.headers["Idempotency-Key"] for call in http.calls]
    assert keys == [str(approved.pk)] * 3
    assert Reclaim.objects.get().status == "reclaimed"
    assert ConsentEvent.objects.filter(type="reclaim_notice_sent").count() == 3  # one per attempt


def _blocked_without_a_call(partner) -> Reclaim:
    with responses.RequestsMock() as http:  # no URL registered: a call would fail the test
        assert dispatch_send(notice().pk) == "skipped"
        assert len(http.calls) == 0
    assert notice().status == "cancelled"
    assert not ConsentEvent.objects.filter(type="reclaim_notice_sent").exists()
    return Reclaim.objects.get()


def test_a_consent_withdrawn_after_approval_blocks_and_nothing_is_sent(approved, partner, origination):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as http:
        http.add(responses.POST, f"{partner.api_base_url}/withdrawals", json={"acknowledged": True})
        consent_withdraw(actor=origination, consent=approved.consent, channel="app")
    assert Reclaim.objects.get().status == "blocked"  # at once, by the withdrawal
    reclaim = _blocked_without_a_call(partner)
    assert reclaim.status_reason == "consent is withdrawn"


def test_a_loan_overdue_after_approval_blocks_and_nothing_is_sent(
    approved, partner, side, borrower, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        side.overdue(borrower, at(20, 9, month=11), "L-1", 2, installment=4, due="2026-11-03")
    assert Reclaim.objects.get().status == "blocked"  # as soon as the callback is applied
    assert _blocked_without_a_call(partner).status_reason == "an overdue was reported"


def test_a_loan_closed_after_approval_blocks_and_nothing_is_sent(approved, partner, side, borrower):
    side.send("loan.closed", borrower, at(20, 9, month=11), loan_id="L-1")
    assert _blocked_without_a_call(partner).status == "blocked"


def test_a_consent_that_expired_after_approval_blocks_at_the_moment_of_sending(approved, partner):
    Consent.objects.update(expires_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    reclaim = _blocked_without_a_call(partner)
    assert (reclaim.status, reclaim.status_reason) == ("blocked", "consent expired")


def test_a_rejected_case_sends_nothing(approved, partner, compliance_officer):
    reclaim_reject(actor=compliance_officer, reclaim=approved, reason="changed our mind")
    with responses.RequestsMock() as http:
        assert dispatch_send(notice().pk) == "skipped"
        assert len(http.calls) == 0


# --- the API and the hand-back --------------------------------------------------------------------------
def test_the_api_review_flow(api, candidate, operations_user, compliance_officer):
    url = f"/api/v1/reclaims/{candidate.pk}"
    assert api(operations_user).post(f"{url}/propose/", {"note": "good"}, format="json").json()["status"] == (
        "under_review"
    )
    assert api(operations_user).post(f"{url}/approve/", {"reason": "x" * 8}, format="json").status_code == 403
    missing = api(compliance_officer).post(f"{url}/approve/", {}, format="json")
    assert missing.status_code == 400
    assert "reason" in missing.json()
    body = api(compliance_officer).post(f"{url}/approve/", {"reason": "repays well"}, format="json").json()
    assert (body["status"], body["loan_id"], body["partner"]) == ("approved", "L-1", "PARTNER_A")
    assert body["borrower"]["masked"] is True
    assert "*" in body["borrower"]["phone"]


def test_scan_via_the_api_is_202(api, compliance_officer, settings, borrower):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    response = api(compliance_officer).post("/api/v1/reclaims/scan/")
    assert response.status_code == 202
    assert "task_id" in response.json()


@pytest.mark.parametrize("who", ["outsider", "auditor", "finance_user", "origination"])
def test_only_proposers_may_scan(api, request, who):
    assert api(request.getfixturevalue(who)).post("/api/v1/reclaims/scan/").status_code == 403


def test_origination_picks_up_reclaimed_borrowers_in_clear_and_each_read_is_recorded(
    api, approved, partner, origination, compliance_officer, borrower
):
    with responses.RequestsMock() as http:
        http.add(responses.POST, f"{partner.api_base_url}/reclaims", json={"acknowledged": True})
        dispatch_send(notice().pk)
    listed = api(origination).get("/api/v1/reclaims/?status=reclaimed").json()["results"]
    assert len(listed) == 1
    assert listed[0]["borrower"]["masked"] is False
    assert listed[0]["borrower"]["phone"] == borrower.applicant.phone
    reveals = ConsentEvent.objects.filter(type="pii_revealed", consent=borrower.consent)
    assert [(e.payload["by"], e.payload["reason"]) for e in reveals] == [(origination.username, "reclaim hand-back")]
    # compliance reads masked, and nothing is recorded for a masked read
    masked = api(compliance_officer).get("/api/v1/reclaims/?status=reclaimed").json()["results"][0]["borrower"]
    assert masked["masked"] is True
    assert masked["phone"] != borrower.applicant.phone
    assert reveals.count() == 1
    assert api(origination).get("/api/v1/reclaims/?status=candidate").json()["results"] == []


def test_a_case_not_handed_back_is_not_origination_s_business(api, approved, origination, compliance_officer):
    assert api(origination).get(f"/api/v1/reclaims/{approved.pk}/").status_code == 404
    assert api(origination).get("/api/v1/reclaims/").json()["results"] == []
    body = api(compliance_officer).get(f"/api/v1/reclaims/{approved.pk}/").json()  # reviewers see it, masked
    assert (body["status"], body["borrower"]["masked"]) == ("approved", True)
    assert not ConsentEvent.objects.filter(type="pii_revealed").exists()


def _fail_for_good(partner):
    with responses.RequestsMock() as http:  # a 4xx is not retried: the notice fails at once
        http.add(responses.POST, f"{partner.api_base_url}/reclaims", status=400, json={"error": "unknown loan"})
        assert dispatch_send(notice().pk) == "failed"
    reclaim = Reclaim.objects.get()
    assert reclaim.status == "notified"
    assert reclaim.status_reason.startswith("notice failed")
    return reclaim


def test_a_notice_that_failed_for_good_can_be_sent_again_with_the_same_key(api, approved, partner, operations_user):
    _fail_for_good(partner)
    response = api(operations_user).post(f"/api/v1/reclaims/{approved.pk}/retry-notice/")
    assert response.status_code == 200, response.content
    assert (response.json()["status"], notice().status) == ("notified", "pending")
    with responses.RequestsMock() as http:
        http.add(responses.POST, f"{partner.api_base_url}/reclaims", json={"acknowledged": True})
        assert dispatch_send(notice().pk) == "succeeded"
        assert http.calls[0].request.headers["Idempotency-Key"] == str(approved.pk)
    assert Reclaim.objects.get().status == "reclaimed"
    again = api(operations_user).post(f"/api/v1/reclaims/{approved.pk}/retry-notice/")
    assert again.status_code == 400
    assert "status" in again.json()


def test_a_retried_notice_is_checked_again_and_blocked_when_consent_was_withdrawn(
    api, approved, partner, operations_user, origination
):
    _fail_for_good(partner)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as http:
        http.add(responses.POST, f"{partner.api_base_url}/withdrawals", json={"acknowledged": True})
        consent_withdraw(actor=origination, consent=approved.consent, channel="app")
    assert api(operations_user).post(f"/api/v1/reclaims/{approved.pk}/retry-notice/").status_code == 200
    with responses.RequestsMock() as http:
        assert dispatch_send(notice().pk) == "skipped"
        assert len(http.calls) == 0
    reclaim = Reclaim.objects.get()
    assert (reclaim.status, reclaim.status_reason) == ("blocked", "consent is withdrawn")
