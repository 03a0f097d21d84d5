"""The contracts API: strict terms, the lifecycle, four-eyes, supersession, history."""

from __future__ import annotations

import datetime

import pytest

from partners.models import Contract
from tests.factories import PartnerFactory, UserFactory, contract_terms, make_contract


def as_json(terms: dict) -> dict:
    body = {**terms, "partner": "PARTNER_A"}
    for key in ("effective_from", "effective_to"):
        if isinstance(body.get(key), datetime.date):
            body[key] = body[key].isoformat()
    return body


@pytest.fixture
def partner(db):
    return PartnerFactory(code="PARTNER_A")


@pytest.fixture
def both_roles(db):
    """Someone who may both draft and approve: four-eyes must still stop them on their own drafts."""
    return UserFactory(username="both", roles=["partnership_manager", "compliance_officer"])


def test_api_md_example_creates_a_draft_version_1(api, partner, partnership_manager):
    response = api(partnership_manager).post("/api/v1/contracts/", as_json(contract_terms()), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["version"], body["created_by"]) == ("draft", 1, "partnerships")
    assert body["fees"]["application_fee_tiers"] == [{"from_count": 1001, "fee": "25.00"}]
    assert body["fees"]["interest_share_rate"] == "0.2500"
    assert body["eligibility"]["min_amount"] == "1000.00"


def test_money_and_rates_are_normalised(api, partner, partnership_manager):
    terms = contract_terms(fees={"application_fee": "30", "vat_rate": "0.06"})
    body = api(partnership_manager).post("/api/v1/contracts/", as_json(terms), format="json").json()
    assert body["fees"]["application_fee"] == "30.00"
    assert body["fees"]["vat_rate"] == "0.0600"
    assert Contract.objects.get().fees["application_fee"] == "30.00"


FEES = contract_terms()["fees"]
BAD_TERMS = [
    ("fees", "interest_share_rate", {"fees": {**contract_terms()["fees"], "interest_share_rate": "1.2"}}),
    ("fees", "vat_rate", {"fees": {**contract_terms()["fees"], "vat_rate": "-0.01"}}),
    ("fees", "application_fee", {"fees": {**contract_terms()["fees"], "application_fee": "-1.00"}}),
    ("fees", "application_fee", {"fees": {**contract_terms()["fees"], "application_fee": "1.001"}}),
    ("fees", "application_fee_tiers", {"fees": {**FEES, "application_fee_tiers": [{"from_count": 1, "fee": "1"}]}}),
    ("eligibility", "provinces", {"eligibility": {**contract_terms()["eligibility"], "provinces": ["999999"]}}),
    ("eligibility", "provinces", {"eligibility": {**contract_terms()["eligibility"], "provinces": ["310100"]}}),
    ("eligibility", "max_amount", {"eligibility": {**contract_terms()["eligibility"], "max_amount": "10.00"}}),
    ("eligibility", "max_age", {"eligibility": {**contract_terms()["eligibility"], "min_age": 50, "max_age": 30}}),
    ("eligibility", "credit_grades", {"eligibility": {**contract_terms()["eligibility"], "credit_grades": ["Z"]}}),
    ("data_fields", None, {"data_fields": ["name", "credit_grade"]}),
    ("data_fields", None, {"data_fields": []}),
    ("effective_to", None, {"effective_to": "2026-10-01"}),
    ("clawback", "fpd_days", {"clawback": {"fpd_days": 0, "duplicate_return_hours": 48}}),
    ("reclaim", "fee", {"reclaim": {"allowed": True, "fee": "-5.00"}}),
]  # fmt: skip


@pytest.mark.parametrize(("field", "subfield", "override"), BAD_TERMS)
def test_bad_terms_are_a_400_naming_the_field_and_write_nothing(
    api, partner, partnership_manager, field, subfield, override
):
    response = api(partnership_manager).post("/api/v1/contracts/", as_json(contract_terms(**override)), format="json")
    assert response.status_code == 400
    errors = response.json()
    assert field in errors
    if subfield:
        assert subfield in errors[field]
    assert not Contract.objects.exists()


def test_unknown_partner_is_a_400(api, partner, partnership_manager):
    body = {**as_json(contract_terms()), "partner": "NOBODY"}
    response = api(partnership_manager).post("/api/v1/contracts/", body, format="json")
    assert response.status_code == 400
    assert "partner" in response.json()


def test_lifecycle_submit_approve_with_four_eyes(api, partner, partnership_manager, compliance_officer, both_roles):
    drafter = api(both_roles)
    contract_id = drafter.post("/api/v1/contracts/", as_json(contract_terms()), format="json").json()["id"]
    assert drafter.post(f"/api/v1/contracts/{contract_id}/submit/").json()["status"] == "pending_approval"

    refused = drafter.post(f"/api/v1/contracts/{contract_id}/approve/")
    assert refused.status_code == 403
    assert "detail" in refused.json()
    assert Contract.objects.get(pk=contract_id).status == "pending_approval"

    approved = api(compliance_officer).post(f"/api/v1/contracts/{contract_id}/approve/")
    assert approved.status_code == 200
    assert (approved.json()["status"], approved.json()["approved_by"]) == ("active", "compliance")


def test_last_editor_cannot_approve(api, partner, partnership_manager, both_roles, compliance_officer):
    contract = make_contract(partner, drafter=partnership_manager)
    api(both_roles).patch(f"/api/v1/contracts/{contract.pk}/", {"priority": 20}, format="json")
    api(partnership_manager).post(f"/api/v1/contracts/{contract.pk}/submit/")
    assert api(both_roles).post(f"/api/v1/contracts/{contract.pk}/approve/").status_code == 403
    assert api(compliance_officer).post(f"/api/v1/contracts/{contract.pk}/approve/").status_code == 200


def test_only_drafts_are_editable(api, partner, partnership_manager, compliance_officer):
    contract = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    response = api(partnership_manager).patch(f"/api/v1/contracts/{contract.pk}/", {"priority": 99}, format="json")
    assert response.status_code == 400
    assert "status" in response.json()
    contract.refresh_from_db()
    assert contract.priority == 10


def test_approving_a_new_version_supersedes_the_old_one(api, partner, partnership_manager, compliance_officer):
    v1 = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    v2 = make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer, effective_from=datetime.date(2026, 12, 1)
    )
    v1.refresh_from_db()
    assert (v1.status, v1.effective_to) == ("superseded", datetime.date(2026, 11, 30))
    assert (v2.status, v2.version) == ("active", 2)


def test_new_version_must_start_after_the_active_one(api, partner, partnership_manager, compliance_officer):
    make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    v2 = make_contract(partner, drafter=partnership_manager, effective_from=datetime.date(2026, 11, 1))
    api(partnership_manager).post(f"/api/v1/contracts/{v2.pk}/submit/")
    response = api(compliance_officer).post(f"/api/v1/contracts/{v2.pk}/approve/")
    assert response.status_code == 400
    assert "effective_from" in response.json()
    assert set(Contract.objects.values_list("status", flat=True)) == {"active", "pending_approval"}


def test_reject_needs_a_reason_and_returns_to_draft(api, partner, partnership_manager, compliance_officer):
    contract = make_contract(partner, drafter=partnership_manager)
    api(partnership_manager).post(f"/api/v1/contracts/{contract.pk}/submit/")
    response = api(compliance_officer).post(f"/api/v1/contracts/{contract.pk}/reject/", {}, format="json")
    assert response.status_code == 400
    assert "reason" in response.json()
    response = api(compliance_officer).post(
        f"/api/v1/contracts/{contract.pk}/reject/", {"reason": "费率高于市场水平"}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["rejection_reason"]) == ("draft", "费率高于市场水平")


def test_invalid_transitions_are_400s(api, partner, partnership_manager, compliance_officer):
    contract = make_contract(partner, drafter=partnership_manager)
    response = api(compliance_officer).post(f"/api/v1/contracts/{contract.pk}/approve/")
    assert response.status_code == 400
    assert "status" in response.json()
    response = api(partnership_manager).post(f"/api/v1/contracts/{contract.pk}/terminate/", {"reason": "x"})
    assert response.status_code == 400


def test_terminate_ends_the_version(api, partner, partnership_manager, compliance_officer):
    contract = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    response = api(compliance_officer).post(
        f"/api/v1/contracts/{contract.pk}/terminate/", {"reason": "合作方违规"}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["terminated_by"]) == ("terminated", "compliance")
    assert body["terminated_at"]


def test_every_change_is_in_history_with_who(api, partner, partnership_manager, compliance_officer):
    contract = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    rows = contract.history.order_by("history_date")
    assert [(h.status, h.history_user.username) for h in rows] == [
        ("draft", "partnerships"),
        ("pending_approval", "partnerships"),
        ("active", "compliance"),
    ]


def test_versions_are_numbered_per_partner(api, partnership_manager):
    a, b = PartnerFactory(code="PARTNER_A"), PartnerFactory(code="PARTNER_B")
    versions = [make_contract(p, drafter=partnership_manager).version for p in (a, a, b)]
    assert versions == [1, 2, 1]


def test_contract_filters(api, partner, partnership_manager, compliance_officer, auditor):
    make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    make_contract(partner, drafter=partnership_manager, effective_from=datetime.date(2027, 1, 1))
    PartnerFactory(code="PARTNER_B")
    client = api(auditor)
    assert [c["status"] for c in client.get("/api/v1/contracts/?status=draft").json()["results"]] == ["draft"]
    assert len(client.get("/api/v1/contracts/?partner=PARTNER_A").json()["results"]) == 2
    assert client.get("/api/v1/contracts/?partner=PARTNER_B").json()["results"] == []


def test_contract_list_query_count_is_bounded(
    api, partnership_manager, compliance_officer, auditor, django_assert_max_num_queries
):
    for i in range(10):
        p = PartnerFactory(code=f"PARTNER_{i}")
        make_contract(p, drafter=partnership_manager, approver=compliance_officer)
        make_contract(p, drafter=partnership_manager, effective_from=datetime.date(2027, 1, 1))
    client = api(auditor)
    with django_assert_max_num_queries(6):
        response = client.get("/api/v1/contracts/?page_size=100")
    assert len(response.json()["results"]) == 20


def test_terminate_takes_no_body_as_api_md_says(api, partner, partnership_manager, compliance_officer):
    contract = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    response = api(compliance_officer).post(f"/api/v1/contracts/{contract.pk}/terminate/")
    assert response.status_code == 200
    assert response.json()["status"] == "terminated"
