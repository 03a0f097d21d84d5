"""The role matrix: every role × every partners endpoint, allowed or refused."""

from __future__ import annotations

import datetime

import pytest

from tests.factories import PartnerFactory, contract_terms, make_contract

ROLES = ["compliance_officer", "partnership_manager", "operations", "finance", "auditor", "origination", "outsider"]
READERS = {"compliance_officer", "partnership_manager", "operations", "finance", "auditor"}
EDITORS = {"partnership_manager"}
APPROVERS = {"compliance_officer"}
TERMINATORS = {"compliance_officer", "partnership_manager"}

NEW_PARTNER = {
    "code": "PARTNER_NEW", "name": "新合作方", "license_type": "bank", "credit_code": "91310000MA1FL8XQ37",
    "contact_email": "dpo@new.example", "contact_phone": "021-12345678", "api_base_url": "http://127.0.0.1:9100/new",
    "api_secret": "new-secret-1", "status": "onboarding",
}  # fmt: skip


def contract_body():
    terms = contract_terms()
    terms["effective_from"] = "2027-01-01"
    return {**terms, "partner": "PARTNER_A"}


@pytest.fixture
def world(cast, partnership_manager, compliance_officer):
    partner = PartnerFactory(code="PARTNER_A")
    active = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    draft = make_contract(partner, drafter=partnership_manager, effective_from=datetime.date(2027, 2, 1))
    pending = make_contract(partner, drafter=partnership_manager, effective_from=datetime.date(2027, 3, 1))
    pending.submit()
    pending.save()
    return {"active": active, "draft": draft, "pending": pending}


# (name, method, url template, body, roles allowed, success status)
ENDPOINTS = [
    ("list partners", "get", "/api/v1/partners/", None, READERS, 200),
    ("read partner", "get", "/api/v1/partners/PARTNER_A/", None, READERS, 200),
    ("create partner", "post", "/api/v1/partners/", NEW_PARTNER, EDITORS, 201),
    ("edit partner", "patch", "/api/v1/partners/PARTNER_A/", {"timeout_ms": 4000}, EDITORS, 200),
    ("list contracts", "get", "/api/v1/contracts/", None, READERS, 200),
    ("read contract", "get", "/api/v1/contracts/{active}/", None, READERS, 200),
    ("create contract", "post", "/api/v1/contracts/", "contract", EDITORS, 201),
    ("edit draft", "patch", "/api/v1/contracts/{draft}/", {"priority": 3}, EDITORS, 200),
    ("submit", "post", "/api/v1/contracts/{draft}/submit/", None, EDITORS, 200),
    ("approve", "post", "/api/v1/contracts/{pending}/approve/", None, APPROVERS, 200),
    ("reject", "post", "/api/v1/contracts/{pending}/reject/", {"reason": "条款不清"}, APPROVERS, 200),
    ("terminate", "post", "/api/v1/contracts/{active}/terminate/", {"reason": "合作终止"}, TERMINATORS, 200),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("name", "method", "url", "body", "allowed", "ok"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_role_matrix(api, cast, world, role, name, method, url, body, allowed, ok):
    url = url.format(**{key: contract.pk for key, contract in world.items()})
    if body == "contract":
        body = contract_body()
    response = getattr(api(cast[role]), method)(url, body, format="json")
    if role in allowed:
        assert response.status_code == ok, response.content
    else:
        assert response.status_code == 403, response.content
        assert "detail" in response.json()


@pytest.mark.parametrize(("name", "method", "url", "body", "allowed", "ok"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_anonymous_gets_401(api, world, name, method, url, body, allowed, ok):
    url = url.format(**{key: contract.pk for key, contract in world.items()})
    response = getattr(api(), method)(url, body if isinstance(body, dict) else None, format="json")
    assert response.status_code == 401
    assert "detail" in response.json()


def test_no_endpoint_allows_delete(api, cast, world):
    client = api(cast["partnership_manager"])
    assert client.delete("/api/v1/partners/PARTNER_A/").status_code == 405
    assert client.delete(f"/api/v1/contracts/{world['draft'].pk}/").status_code == 405
