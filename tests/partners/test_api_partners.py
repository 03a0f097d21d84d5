"""The partners API: validation, PIA gating, the write-only secret, filters, query bounds."""

from __future__ import annotations

import pytest

from partners.models import Partner
from tests.factories import PartnerFactory, credit_code

EXAMPLE = {
    "code": "PARTNER_A", "name": "甲消费金融有限公司", "license_type": "consumer_finance",
    "credit_code": "91310000MA1FL8XQ37", "contact_email": "dpo@a.example", "contact_phone": "021-12345678",
    "status": "active", "api_base_url": "http://127.0.0.1:9100/a", "api_secret": "s3cret-a",
    "phone_hash": "hmac_sha256", "timeout_ms": 3000, "max_requests_per_second": 50,
    "pia_reference": "PIA-2026-017", "pia_completed_on": "2026-10-20",
}  # fmt: skip


def test_api_md_example_creates_an_active_partner(api, partnership_manager):
    response = api(partnership_manager).post("/api/v1/partners/", EXAMPLE, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "active"
    assert "api_secret" not in body
    assert Partner.objects.get(code="PARTNER_A").api_secret == "s3cret-a"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("credit_code", "91310000MA1FL8XQ38"),  # wrong check character
        ("credit_code", "91310000MA1FL8XQ3"),  # 17 characters
        ("code", "partner-a"),
        ("code", "A"),
        ("license_type", "pawnshop"),
        ("phone_hash", "crc32"),
        ("timeout_ms", 0),
        ("contact_email", "not-an-email"),
        ("api_base_url", "ftp//nowhere"),
    ],
)
def test_bad_partner_field_is_a_400_naming_it_and_writes_nothing(api, partnership_manager, field, value):
    response = api(partnership_manager).post("/api/v1/partners/", {**EXAMPLE, field: value}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Partner.objects.exists()


def test_partner_cannot_become_active_without_a_pia(api, partnership_manager):
    body = {**EXAMPLE, "pia_reference": "", "pia_completed_on": None}
    response = api(partnership_manager).post("/api/v1/partners/", body, format="json")
    assert response.status_code == 400
    assert "status" in response.json()
    assert not Partner.objects.exists()

    onboarding = {**body, "status": "onboarding"}
    assert api(partnership_manager).post("/api/v1/partners/", onboarding, format="json").status_code == 201
    response = api(partnership_manager).patch("/api/v1/partners/PARTNER_A/", {"status": "active"}, format="json")
    assert response.status_code == 400
    assert "status" in response.json()
    assert Partner.objects.get(code="PARTNER_A").status == "onboarding"

    response = api(partnership_manager).patch(
        "/api/v1/partners/PARTNER_A/",
        {"status": "active", "pia_reference": "PIA-2026-099", "pia_completed_on": "2026-11-01"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "active"


def test_active_partner_cannot_drop_its_pia(api, partnership_manager):
    PartnerFactory(code="PARTNER_A")
    response = api(partnership_manager).patch("/api/v1/partners/PARTNER_A/", {"pia_reference": ""}, format="json")
    assert response.status_code == 400
    assert Partner.objects.get(code="PARTNER_A").pia_reference


def test_offboarded_partner_cannot_come_back(api, partnership_manager):
    PartnerFactory(code="PARTNER_A", status="offboarded")
    response = api(partnership_manager).patch("/api/v1/partners/PARTNER_A/", {"status": "active"}, format="json")
    assert response.status_code == 400
    assert "status" in response.json()


def test_patch_without_secret_keeps_it_and_with_secret_rotates_it(api, partnership_manager):
    PartnerFactory(code="PARTNER_A", api_secret="old-secret-1")
    client = api(partnership_manager)
    assert client.patch("/api/v1/partners/PARTNER_A/", {"timeout_ms": 5000}, format="json").status_code == 200
    assert Partner.objects.get(code="PARTNER_A").api_secret == "old-secret-1"
    response = client.patch("/api/v1/partners/PARTNER_A/", {"api_secret": "new-secret-2"}, format="json")
    assert response.status_code == 200
    assert "api_secret" not in response.json()
    partner = Partner.objects.get(code="PARTNER_A")
    assert partner.api_secret == "new-secret-2"
    assert partner.api_secret_changed_at is not None


def test_code_cannot_be_changed(api, partnership_manager):
    PartnerFactory(code="PARTNER_A")
    response = api(partnership_manager).patch("/api/v1/partners/PARTNER_A/", {"code": "PARTNER_Z"}, format="json")
    assert response.status_code == 200
    assert Partner.objects.filter(code="PARTNER_A").exists()


def test_duplicate_code_is_a_400(api, partnership_manager):
    PartnerFactory(code="PARTNER_A")
    response = api(partnership_manager).post("/api/v1/partners/", EXAMPLE, format="json")
    assert response.status_code == 400
    assert "code" in response.json()


def test_history_records_who_changed_a_partner(api, partnership_manager):
    api(partnership_manager).post("/api/v1/partners/", EXAMPLE, format="json")
    api(partnership_manager).patch("/api/v1/partners/PARTNER_A/", {"name": "甲消费金融股份有限公司"}, format="json")
    history = Partner.objects.get(code="PARTNER_A").history.order_by("history_date")
    assert [h.history_user for h in history] == [partnership_manager, partnership_manager]
    assert [h.name for h in history] == ["甲消费金融有限公司", "甲消费金融股份有限公司"]
    assert not hasattr(history.first(), "api_secret")


def test_list_filters_by_status_and_license(api, auditor):
    PartnerFactory(code="P_ACTIVE")
    PartnerFactory(code="P_SUSP", status="suspended", license_type="bank")
    client = api(auditor)
    codes = [p["code"] for p in client.get("/api/v1/partners/?status=suspended").json()["results"]]
    assert codes == ["P_SUSP"]
    codes = [p["code"] for p in client.get("/api/v1/partners/?license_type=consumer_finance").json()["results"]]
    assert codes == ["P_ACTIVE"]


def test_partner_list_query_count_is_bounded(api, auditor, django_assert_max_num_queries):
    client = api(auditor)
    for i in range(25):
        PartnerFactory(code=f"PARTNER_{i:02d}", credit_code=credit_code(500 + i))
    with django_assert_max_num_queries(6):
        response = client.get("/api/v1/partners/")
    assert response.status_code == 200
    assert len(response.json()["results"]) == 25


def test_errors_are_in_chinese_by_default_and_english_on_request(api, partnership_manager):
    client = api(partnership_manager)
    zh = client.post("/api/v1/partners/", {}, format="json").json()
    en = client.post("/api/v1/partners/", {}, format="json", HTTP_ACCEPT_LANGUAGE="en").json()
    assert en["code"] == ["This field is required."]
    assert zh["code"] != en["code"]


@pytest.mark.parametrize("value", ["2026-01-01T00:00:00+19:52", "0001-01-01T00:00:00", "not-a-date"])
def test_odd_created_filters_are_answered_not_crashed(api, auditor, value):
    response = api(auditor).get("/api/v1/partners/", {"created_before": value})
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert "created_before" in response.json()
