"""Each line type of settlement-rules.md on its boundaries, contract versions, credit notes, late
events and frozen statements. Events arrive as signed callbacks (``PartnerSide``); the month is
computed by the same service the Celery run calls."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest

from settlements import periods
from settlements.models import Statement, StatementLine
from settlements.services.statements import statement_approve, statement_compute, statement_submit
from tests.factories import make_contract
from tests.settlements.builders import at, submitting
from tests.settlements.conftest import WORKED_EXAMPLE_CLAWBACK, WORKED_EXAMPLE_FEES


def compute(partner, user, period="2026-11") -> Statement:
    statement, computed = statement_compute(partner=partner, period=period, user=user)
    assert computed
    return statement


def lines(statement, line_type=None) -> list[tuple[str, Decimal]]:
    rows = statement.lines.order_by("occurred_at", "id")
    if line_type:
        rows = rows.filter(line_type=line_type)
    return [(row.line_type, row.amount) for row in rows]


def amounts(statement, line_type) -> list[Decimal]:
    return [amount for _type, amount in lines(statement, line_type)]


@pytest.fixture
def make(contract, origination_api, text, partner):
    return lambda count=1: submitting(origination_api, text, partner, count)


# --- application fee and its tiers ------------------------------------------------------------
def test_tiers_are_marginal_by_acceptance_order_with_the_edge_at_exactly_from_count(
    partner, partnership_manager, compliance_officer, origination_api, text, side, finance_user
):
    fees = {
        **WORKED_EXAMPLE_FEES,
        "application_fee_tiers": [{"from_count": 5, "fee": "20.00"}, {"from_count": 3, "fee": "25.00"}],
    }
    make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer, fees=fees, clawback=WORKED_EXAMPLE_CLAWBACK
    )
    referrals = submitting(origination_api, text, partner, 6)
    for index, referral in enumerate(reversed(referrals)):  # acceptance order is by time, not creation
        side.accepted(referral, at(3, 9, index))
    statement = compute(partner, finance_user)
    assert amounts(statement, "application_fee") == [
        Decimal(x) for x in ("30.00", "30.00", "25.00", "25.00", "20.00", "20.00")
    ]
    assert [line.basis for line in statement.lines.filter(line_type="application_fee").order_by("occurred_at")] == [
        "#1", "#2", "#3", "#4", "#5", "#6"
    ]  # fmt: skip


def test_acceptances_at_the_same_moment_are_numbered_by_referral_id(make, side, finance_user, partner):
    referrals = make(3)
    for referral in referrals:
        side.accepted(referral, at(3, 9))
    statement = compute(partner, finance_user)
    by_number = statement.lines.filter(line_type="application_fee").order_by("basis")
    assert [line.referral_id for line in by_number] == sorted(r.pk for r in referrals)
    assert [line.amount for line in by_number] == [Decimal("30.00"), Decimal("30.00"), Decimal("25.00")]


def test_numbering_restarts_each_month(make, side, finance_user, partner):
    referrals = make(4)
    side.accepted(referrals[0], at(30, 9, month=10))
    side.accepted(referrals[1], at(31, 23, 59, month=10))
    side.accepted(referrals[2], at(1, 0, 0))  # 00:00 Shanghai on 1 November belongs to November
    side.accepted(referrals[3], at(2, 9))
    october = compute(partner, finance_user, "2026-10")
    november = compute(partner, finance_user)
    assert amounts(october, "application_fee") == [Decimal("30.00")] * 2
    assert amounts(november, "application_fee") == [Decimal("30.00")] * 2


def test_a_synchronous_acceptance_takes_the_time_spillway_received_it(
    contract, origination_api, text, partner, finance_user
):
    import json

    import responses

    from referrals.models import Dispatch, Referral
    from referrals.services.dispatch import dispatch_send
    from tests.factories import intake_payload

    body = intake_payload(text=text, partners=[partner.code], seq=9001)
    applicant = origination_api.post("/api/v1/applicants/", body, format="json").json()
    referral = Referral.objects.get(applicant_id=applicant["id"])
    with responses.RequestsMock() as http:
        http.add(responses.POST, f"{partner.api_base_url}/probe", json={"decision": "accept", "reason": ""})
        http.add(
            responses.POST, f"{partner.api_base_url}/applications",
            body=json.dumps({"application_id": "SYNC-1", "decision": "accepted", "reason": ""}),
        )  # fmt: skip
        for kind in ("probe", "application"):
            assert dispatch_send(Dispatch.objects.get(referral=referral, kind=kind).pk) == "succeeded"
    referral.refresh_from_db()
    assert referral.status == "submitted"
    assert referral.accepted_at is not None
    statement = compute(partner, finance_user, periods.of(referral.accepted_at))
    line = statement.lines.get(line_type="application_fee")
    assert (line.amount, line.occurred_at, line.event_id) == (Decimal("30.00"), referral.accepted_at, None)


# --- returned applications --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("after", "clawed_back"),
    [
        (datetime.timedelta(hours=10), True),
        (datetime.timedelta(hours=48), True),
        (datetime.timedelta(hours=48, seconds=1), False),
        (datetime.timedelta(days=5), False),
    ],
    ids=["10h", "exactly-48h", "48h+1s", "5d"],
)
def test_a_return_inside_the_window_takes_the_fee_back_and_a_later_one_nothing(
    make, side, finance_user, partner, after, clawed_back
):
    (referral,) = make()
    side.accepted(referral, at(3, 9))
    side.returned(referral, at(3, 9) + after)
    statement = compute(partner, finance_user)
    assert amounts(statement, "clawback_returned") == ([Decimal("-30.00")] if clawed_back else [])


def test_the_return_takes_back_the_tier_fee_that_was_charged(make, side, finance_user, partner):
    referrals = make(3)
    for index, referral in enumerate(referrals):
        side.accepted(referral, at(3, 9 + index))
    side.returned(referrals[2], at(3, 20))  # n = 3: charged 25.00
    statement = compute(partner, finance_user)
    assert amounts(statement, "clawback_returned") == [Decimal("-25.00")]


# --- loans ----------------------------------------------------------------------------------------
def test_approval_fee_is_charged_once_per_referral_and_disbursement_fee_once_per_loan(
    make, side, finance_user, partner
):
    (referral,) = make()
    side.accepted(referral, at(2, 9))
    side.approved(referral, at(4, 9), "L-1")
    side.approved(referral, at(4, 9), "L-1")  # the same loan reported twice
    side.approved(referral, at(6, 9), "L-2")  # a second loan for the same referral
    side.disbursed(referral, at(5, 9), "L-1", "10000.00")
    side.disbursed(referral, at(7, 9), "L-2", "3333.33")
    statement = compute(partner, finance_user)
    assert amounts(statement, "approval_fee") == [Decimal("5.00")]
    assert amounts(statement, "disbursement_fee") == [Decimal("100.00"), Decimal("33.33")]


def test_disbursement_fee_rounds_half_up(make, side, finance_user, partner):
    (referral,) = make()
    side.disbursed(referral, at(5, 9), "L-1", "50.50")  # × 0.01 = 0.505 → 0.51
    assert amounts(compute(partner, finance_user), "disbursement_fee") == [Decimal("0.51")]


def test_interest_share_is_by_paid_date_and_rounded_half_up_per_repayment(make, side, finance_user, partner):
    (referral,) = make()
    side.disbursed(referral, at(1, 9, month=10), "L-1", "20000.00")
    side.repaid(referral, at(1, 9, month=12), "L-1", 1, "166.67", paid=datetime.date(2026, 11, 30))  # reported late
    side.repaid(referral, at(30, 9), "L-1", 2, "0.02", paid=datetime.date(2026, 12, 1))  # December
    side.repaid(referral, at(15, 9), "L-1", 3, "100.02", paid=datetime.date(2026, 11, 15))  # 25.005 → 25.01
    statement = compute(partner, finance_user)
    assert amounts(statement, "interest_share") == [Decimal("25.01"), Decimal("41.67")]


@pytest.mark.parametrize(("days", "clawed_back"), [(29, False), (30, True), (31, True)])
def test_fpd_clawback_from_exactly_fpd_days(make, side, finance_user, partner, days, clawed_back):
    (referral,) = make()
    side.approved(referral, at(1, 9, month=10), "L-1")
    side.disbursed(referral, at(1, 10, month=10), "L-1", "8333.33")
    side.overdue(referral, at(20, 9), "L-1", days)
    statement = compute(partner, finance_user)
    assert amounts(statement, "clawback_fpd") == ([Decimal("-88.33")] if clawed_back else [])


def test_fpd_clawback_is_taken_once_per_loan_and_only_for_instalment_one(make, side, finance_user, partner):
    first, second = make(2)
    side.disbursed(first, at(1, 10, month=9), "L-1", "1000.00")
    side.overdue(first, at(20, 9, month=10), "L-1", 30)
    side.overdue(first, at(20, 9), "L-1", 60)  # the same default, reported again in November
    side.disbursed(second, at(1, 10, month=9), "L-2", "1000.00")
    side.overdue(second, at(20, 9), "L-2", 45, installment=2)
    october = compute(partner, finance_user, "2026-10")
    november = compute(partner, finance_user)
    assert amounts(october, "clawback_fpd") == [Decimal("-10.00")]  # no approval reported: only the disbursement fee
    assert amounts(november, "clawback_fpd") == []


# --- contract versions, VAT groups, credit notes --------------------------------------------------
def test_each_referral_is_charged_under_the_version_it_was_routed_under(
    contract, partner, partnership_manager, compliance_officer, origination_api, text, side, finance_user
):
    old = submitting(origination_api, text, partner, 2)
    fees = {**WORKED_EXAMPLE_FEES, "application_fee": "40.00", "application_fee_tiers": [], "vat_rate": "0.0300"}
    new_version = make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer, fees=fees, clawback=WORKED_EXAMPLE_CLAWBACK,
        effective_from=datetime.date(2026, 11, 15),
    )  # fmt: skip
    new = submitting(origination_api, text, partner, 2)
    assert {r.contract_id for r in old} == {contract.pk}
    assert {r.contract_id for r in new} == {new_version.pk}
    # Accepted interleaved: numbering runs across both versions; the fee comes from each one's own terms.
    for index, referral in enumerate([old[0], new[0], old[1], new[1]]):
        side.accepted(referral, at(20, 9 + index))
    statement = compute(partner, finance_user)
    rows = statement.lines.filter(line_type="application_fee").order_by("occurred_at")
    assert [(row.contract_id, row.amount, row.vat_rate) for row in rows] == [
        (contract.pk, Decimal("30.00"), Decimal("0.0600")),
        (new_version.pk, Decimal("40.00"), Decimal("0.0300")),
        (contract.pk, Decimal("25.00"), Decimal("0.0600")),  # n = 3 under the old tiers
        (new_version.pk, Decimal("40.00"), Decimal("0.0300")),
    ]
    # VAT by rate group: round(55.00 × 0.06) + round(80.00 × 0.03) = 3.30 + 2.40
    assert (statement.net, statement.vat, statement.gross) == (Decimal("135.00"), Decimal("5.70"), Decimal("140.70"))


def test_a_month_of_clawbacks_is_a_credit_note(make, side, finance_user, partner):
    (referral,) = make()
    side.accepted(referral, at(31, 20, month=10))
    side.returned(referral, at(1, 10))
    compute(partner, finance_user, "2026-10")
    november = compute(partner, finance_user)
    assert lines(november) == [("clawback_returned", Decimal("-30.00"))]
    assert (november.net, november.vat, november.gross) == (Decimal("-30.00"), Decimal("-1.80"), Decimal("-31.80"))


# --- drafts, approval, late events -------------------------------------------------------------------
def approve(statement, by, second):
    statement_submit(statement=statement, user=by)
    return statement_approve(statement=statement, user=second)


def test_an_approved_statement_never_changes(make, side, finance_user, second_finance_user, partner):
    first, second = make(2)
    side.accepted(first, at(2, 9))
    statement = approve(compute(partner, finance_user), finance_user, second_finance_user)
    before = list(statement.lines.values_list("key", "amount"))
    side.accepted(second, at(3, 9))  # arrives after approval
    again, computed = statement_compute(partner=partner, period="2026-11", user=finance_user)
    assert not computed
    again.refresh_from_db()
    assert list(again.lines.values_list("key", "amount")) == before
    assert (again.status, again.net) == ("approved", Decimal("30.00"))


def test_late_events_land_in_the_next_open_month_marked_late_with_their_own_date(
    make, side, finance_user, second_finance_user, partner
):
    first, second = make(2)
    side.accepted(first, at(10, 9, month=10))
    approve(compute(partner, finance_user, "2026-10"), finance_user, second_finance_user)
    side.accepted(second, at(20, 9, month=10))  # an October acceptance, reported after October was approved
    side.approved(second, at(25, 9, month=10), "L-2")
    november = compute(partner, finance_user)
    late = {(row.line_type, row.amount, row.occurred_at, row.late) for row in november.lines.all()}
    assert late == {
        ("application_fee", Decimal("30.00"), at(20, 9, month=10), True),  # n = 2 of October
        ("approval_fee", Decimal("5.00"), at(25, 9, month=10), True),
    }
    # Counted once: re-running November keeps them, and October stays as approved.
    statement_compute(partner=partner, period="2026-11", user=finance_user)
    assert StatementLine.objects.filter(referral=second).count() == 2
    assert Statement.objects.get(period="2026-10").line_count == 1


def test_late_events_skip_months_that_are_approved_too(make, side, finance_user, second_finance_user, partner):
    first, second = make(2)
    side.accepted(first, at(10, 9, month=9))
    approve(compute(partner, finance_user, "2026-09"), finance_user, second_finance_user)
    approve(compute(partner, finance_user, "2026-10"), finance_user, second_finance_user)
    side.accepted(second, at(20, 9, month=9))
    november = compute(partner, finance_user)
    assert [(row.line_type, row.late, row.occurred_at) for row in november.lines.all()] == [
        ("application_fee", True, at(20, 9, month=9))
    ]


def test_events_of_a_month_still_open_are_not_late_elsewhere(make, side, finance_user, partner):
    (referral,) = make()
    side.accepted(referral, at(10, 9, month=10))  # October never computed: the line belongs to October
    november = compute(partner, finance_user)
    assert november.line_count == 0
    assert compute(partner, finance_user, "2026-10").line_count == 1


def test_a_line_moves_between_drafts_when_an_earlier_event_arrives(make, side, finance_user, partner):
    (referral,) = make()
    side.approved(referral, at(2, 9, month=12), "L-1")
    december = compute(partner, finance_user, "2026-12")
    assert amounts(december, "approval_fee") == [Decimal("5.00")]
    side.approved(referral, at(28, 9), "L-1")  # an earlier report of the same approval, delivered late
    november = compute(partner, finance_user)
    assert amounts(november, "approval_fee") == [Decimal("5.00")]
    december.refresh_from_db()
    assert (december.line_count, december.net) == (0, Decimal("0.00"))
