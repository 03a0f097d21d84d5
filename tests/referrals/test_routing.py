"""Routing: who gets the applicant, under which version, and the recorded reason for everyone else."""

from __future__ import annotations

import datetime

import pytest

from referrals.models import Dispatch, Referral, RoutingDecision
from tests.factories import PartnerFactory, make_contract, national_id

URL = "/api/v1/applicants/"


@pytest.fixture
def contracts(partners, partnership_manager, compliance_officer):
    return {
        p.code: make_contract(p, drafter=partnership_manager, approver=compliance_officer, priority=10 + i)
        for i, p in enumerate(partners)
    }


def intake(client, body):
    response = client.post(URL, body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def decision(partner_code: str) -> RoutingDecision:
    return RoutingDecision.objects.get(partner__code=partner_code)


def test_every_named_eligible_partner_gets_a_queued_referral_and_a_probe(origination_api, payload, contracts):
    body = intake(origination_api, payload())
    assert sorted((r["partner"], r["status"]) for r in body["referrals"]) == [
        ("PARTNER_A", "queued"),
        ("PARTNER_B", "queued"),
    ]
    referral = Referral.objects.get(partner__code="PARTNER_A")
    assert referral.contract == contracts["PARTNER_A"]
    assert referral.priority == 10
    assert Dispatch.objects.filter(kind="probe", referral=referral, idempotency_key=f"probe:{referral.pk}").exists()
    assert decision("PARTNER_A").reason == "eligible"


def test_partners_not_named_in_the_consent_get_nothing(origination_api, payload, contracts):
    body = payload()
    body["consent"]["partners"] = ["PARTNER_A"]
    intake(origination_api, body)
    assert list(Referral.objects.values_list("partner__code", flat=True)) == ["PARTNER_A"]
    assert not RoutingDecision.objects.filter(partner__code="PARTNER_B").exists()


ELIGIBILITY_CASES = [
    # (contract eligibility change, applicant change, expected reason)
    ({"min_amount": "60000.00"}, {}, "amount_below_minimum"),
    ({"max_amount": "49999.99"}, {}, "amount_above_maximum"),
    ({"terms_months": [3, 6]}, {}, "term_not_offered"),
    ({"provinces": ["110000"]}, {}, "province_not_served"),
    ({"min_age": 40}, {}, "age_below_contract_minimum"),
    ({"max_age": 30}, {}, "age_above_contract_maximum"),
    ({"credit_grades": ["C"]}, {}, "credit_grade_not_accepted"),
    ({"decline_reasons": ["OUT_OF_REGION"]}, {}, "decline_reason_not_accepted"),
]


@pytest.mark.parametrize(("rules", "changes", "reason"), ELIGIBILITY_CASES)
def test_each_eligibility_rule_excludes_with_its_reason(
    origination_api, payload, partners, partnership_manager, compliance_officer, rules, changes, reason
):
    eligibility = {"min_amount": "1000.00", "max_amount": "200000.00", "terms_months": [12], "min_age": 22, "max_age": 55,
                   "credit_grades": ["B"], "decline_reasons": ["FUNDING_COST"], "provinces": ["310000"]}  # fmt: skip
    make_contract(
        partners[0], drafter=partnership_manager, approver=compliance_officer, eligibility={**eligibility, **rules}
    )
    make_contract(partners[1], drafter=partnership_manager, approver=compliance_officer, eligibility=eligibility)
    intake(origination_api, payload(**changes))
    assert (decision("PARTNER_A").outcome, decision("PARTNER_A").reason) == ("excluded", reason)
    assert decision("PARTNER_B").outcome == "referred"  # the same applicant passes the untouched contract


def test_boundaries_are_inclusive(origination_api, payload, partners, partnership_manager, compliance_officer):
    eligibility = {"min_amount": "50000.00", "max_amount": "50000.00", "min_age": 36, "max_age": 36}
    make_contract(partners[0], drafter=partnership_manager, approver=compliance_officer, eligibility=eligibility)
    # Born 1990-05-17 (the factory's ID); 36 on any day of 2026 after 17 May.
    intake(origination_api, payload(requested_amount="50000.00"))
    assert decision("PARTNER_A").outcome == "referred"


def test_inactive_partner_and_missing_contract_are_recorded(origination_api, payload, partners, contracts):
    partners[0].status = "suspended"
    partners[0].save()
    third = PartnerFactory(code="PARTNER_C")
    body = payload()
    body["consent"]["partners"] = ["PARTNER_A", "PARTNER_B", "PARTNER_C"]
    intake(origination_api, body)
    assert decision("PARTNER_A").reason == "partner_not_active"
    assert decision(third.code).reason == "no_contract_in_force"
    assert list(Referral.objects.values_list("partner__code", flat=True)) == ["PARTNER_B"]


@pytest.mark.parametrize(("birth", "reason"), [(datetime.date(2006, 1, 1), "outside_suitability_policy"),
                                               (datetime.date(1949, 12, 31), "outside_suitability_policy")])  # fmt: skip
def test_global_suitability_policy(origination_api, payload, contracts, settings, birth, reason):
    intake(origination_api, payload(national_id=national_id(birth=birth)))
    assert decision("PARTNER_A").reason == reason
    assert "age" in decision("PARTNER_A").detail
    assert not Referral.objects.exists()


def test_same_person_is_not_referred_twice_within_the_dedupe_window(origination_api, payload, contracts):
    intake(origination_api, payload(seq=1))
    # The same ID number under another external id (the person applied again).
    intake(origination_api, payload(seq=2, national_id=payload(seq=1)["national_id"]))
    second = RoutingDecision.objects.filter(applicant__external_id="APP-2026-000002")
    assert set(second.values_list("reason", flat=True)) == {"referred_recently"}
    assert Referral.objects.count() == 2


def test_dedupe_window_ends(origination_api, payload, contracts):
    intake(origination_api, payload(seq=1))
    Referral.objects.update(created_at=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    intake(origination_api, payload(seq=2, national_id=payload(seq=1)["national_id"]))
    assert Referral.objects.count() == 4


def test_daily_cap_takes_exactly_the_remaining_slots(
    origination_api, payload, partners, partnership_manager, compliance_officer
):
    make_contract(partners[0], drafter=partnership_manager, approver=compliance_officer, daily_cap=2, monthly_cap=10)
    items = [payload(seq=i) for i in range(1, 5)]
    origination_api.post(f"{URL}batch/", {"items": items}, format="json")
    assert Referral.objects.filter(partner__code="PARTNER_A").count() == 2
    capped = RoutingDecision.objects.filter(partner__code="PARTNER_A", reason="daily_cap_reached")
    assert capped.count() == 2


def test_monthly_cap(origination_api, payload, partners, partnership_manager, compliance_officer):
    make_contract(partners[0], drafter=partnership_manager, approver=compliance_officer, daily_cap=None, monthly_cap=1)
    intake(origination_api, payload(seq=1))
    intake(origination_api, payload(seq=2))
    assert RoutingDecision.objects.get(applicant__external_id="APP-2026-000002", partner__code="PARTNER_A").reason == (
        "monthly_cap_reached"
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_intakes_at_once_cannot_both_take_the_last_slot(partnership_manager, compliance_officer, origination):
    import threading

    from django.db import connection

    from referrals.api.views import _validator
    from referrals.services.intake import applicant_intake
    from tests.factories import consent_text, intake_payload

    partner = PartnerFactory(code="PARTNER_A")
    make_contract(partner, drafter=partnership_manager, approver=compliance_officer, daily_cap=1)
    text = consent_text(actor=compliance_officer)
    barrier = threading.Barrier(4)
    results = []

    def run(seq):
        try:
            barrier.wait()
            item = intake_payload(text=text, partners=["PARTNER_A"], seq=seq)
            results.append(applicant_intake(actor=origination, items=[item], validate=_validator())[0].status)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(seq,)) for seq in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [201] * 4
    assert Referral.objects.count() == 1
    assert RoutingDecision.objects.filter(reason="daily_cap_reached").count() == 3


def test_withdrawn_or_unrouted_applicants_have_decisions_visible_in_the_api(
    api, compliance_officer, origination_api, payload, contracts
):
    created = intake(origination_api, payload())
    fetched = api(compliance_officer).get(f"{URL}{created['id']}/").json()
    assert {r["partner"] for r in fetched["referrals"]} == {"PARTNER_A", "PARTNER_B"}
