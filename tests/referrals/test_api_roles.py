"""The role matrix for the consent and intake endpoints."""

from __future__ import annotations

import pytest

from referrals.models import Consent

ROLES = ["compliance_officer", "partnership_manager", "operations", "finance", "auditor", "origination", "outsider"]
CONSENT_READERS = {"compliance_officer", "auditor"}
APPLICANT_READERS = {"compliance_officer", "auditor"}  # not operations: referrals 0010
WITHDRAWERS = {"origination", "compliance_officer"}
NEW_TEXT = {"code": "t-new", "body": "正文", "validity_days": 30}


@pytest.fixture
def world(cast, origination_api, payload):
    assert origination_api.post("/api/v1/applicants/", payload(seq=1), format="json").status_code == 201
    return {"consent": Consent.objects.get(), "payload": payload}


def endpoints(world):
    consent, payload = world["consent"], world["payload"]
    return [
        # (name, method, url, body, allowed roles, success status)
        ("create applicant", "post", "/api/v1/applicants/", payload(seq=9), {"origination"}, 201),
        ("batch", "post", "/api/v1/applicants/batch/", {"items": [payload(seq=8)]}, {"origination"}, 200),
        ("list applicants", "get", "/api/v1/applicants/", None, APPLICANT_READERS, 200),
        ("read applicant", "get", f"/api/v1/applicants/{consent.applicant_id}/", None, APPLICANT_READERS, 200),
        ("withdraw", "post", f"/api/v1/consents/{consent.pk}/withdraw/", {"channel": "app"}, WITHDRAWERS, 200),
        ("ledger events", "get", f"/api/v1/consents/{consent.pk}/events/", None, CONSENT_READERS, 200),
        ("list texts", "get", "/api/v1/consent-texts/", None, CONSENT_READERS, 200),
        ("create text", "post", "/api/v1/consent-texts/", NEW_TEXT, {"compliance_officer"}, 201),
    ]  # fmt: skip


NAMES = [
    "create applicant",
    "batch",
    "list applicants",
    "read applicant",
    "withdraw",
    "ledger events",
    "list texts",
    "create text",
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", NAMES)
def test_role_matrix(api, cast, world, role, name):
    [(_, method, url, body, allowed, ok)] = [e for e in endpoints(world) if e[0] == name]
    response = getattr(api(cast[role]), method)(url, body, format="json")
    if role in allowed:
        assert response.status_code == ok, response.content
    else:
        assert response.status_code == 403, response.content


@pytest.mark.parametrize("name", NAMES)
def test_anonymous_is_401(api, world, name):
    [(_, method, url, body, _allowed, _ok)] = [e for e in endpoints(world) if e[0] == name]
    assert getattr(api(), method)(url, body, format="json").status_code == 401


def test_applicant_list_query_count_is_bounded(api, auditor, origination_api, payload, django_assert_max_num_queries):
    origination_api.post("/api/v1/applicants/batch/", {"items": [payload(seq=i) for i in range(1, 31)]}, format="json")
    with django_assert_max_num_queries(12):  # auth and permissions, then 3 queries for the page
        response = api(auditor).get("/api/v1/applicants/?page_size=100")
    assert len(response.json()["results"]) == 30
    assert all("*" in a["phone"] for a in response.json()["results"])
