"""Intake through the API: validation names the field and stores nothing; idempotency; batches."""

from __future__ import annotations

import copy
import datetime
import logging

import pytest
from django.db import connection

from referrals.models import Applicant, Consent, ConsentEvent, ConsentRecipient, Dispatch, Referral
from tests.factories import make_contract, national_id

URL = "/api/v1/applicants/"


def nothing_stored():
    return not (Applicant.objects.exists() or Consent.objects.exists() or ConsentEvent.objects.exists())


def test_api_md_example_is_accepted_masked_and_ledgered(origination_api, payload):
    body = payload(name="张三", national_id="11010519491231002X", phone="13812345678")
    response = origination_api.post(URL, body, format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    assert (data["name"], data["phone"], data["national_id"]) == ("张*", "138****5678", "110105********002X")
    assert data["external_id"] == "APP-2026-000001"
    assert data["consent"]["status"] == "granted"
    assert data["consent"]["partners"] == ["PARTNER_A", "PARTNER_B"]
    assert data["referrals"] == []
    consent = Consent.objects.get()
    # Expiry defaults to the text's validity.
    assert consent.expires_at - consent.granted_at == datetime.timedelta(days=90)
    [event] = consent.events.all()
    assert (event.seq, event.type, event.prev_hash) == (1, "granted", "0" * 64)
    assert event.payload["recipients"][0]["name"] == "甲消费金融有限公司"
    assert event.payload["text_sha256"] == consent.text_sha256


def test_named_partners_keep_what_was_disclosed(origination_api, payload, partners):
    origination_api.post(URL, payload(), format="json")
    partners[0].name = "甲消费金融股份有限公司"
    partners[0].save()
    recipient = ConsentRecipient.objects.get(partner=partners[0])
    assert recipient.disclosed_name == "甲消费金融有限公司"
    assert recipient.disclosed_contact_email == partners[0].contact_email


def test_personal_data_is_encrypted_at_rest(origination_api, payload):
    origination_api.post(
        URL, payload(name="张三", national_id="11010519491231002X", phone="13812345678"), format="json"
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, national_id, phone, phone_index FROM referrals_applicant")
        row = " ".join(cursor.fetchone())
    assert "13812345678" not in row
    assert "5678" not in row.replace("enc1", "")  # not even the tail in clear
    assert "11010519491231002X" not in row
    assert "张三" not in row
    assert Applicant.objects.get().phone == "13812345678"


def test_logs_of_an_intake_carry_no_personal_data(origination_api, payload, caplog):
    body = payload(phone="13812345678", national_id="11010519491231002X")
    body["consent"]["text_sha256"] = "0" * 64  # a 400 is logged by Django with the request path
    with caplog.at_level(logging.DEBUG):
        origination_api.post(URL, body, format="json")
        origination_api.post(URL, payload(seq=2, phone="13812345678", national_id="11010519491231002X"), format="json")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "13812345678" not in text
    assert "11010519491231002X" not in text


NATIONAL_ID_CASES = [
    ("11010519491231002Y", "check character"),
    ("1101051949123100", "18 characters"),
    ("11010519900230001X", "birth"),  # 30 February, with a correct check character
    (national_id(region="990000"), "region"),
    (national_id(birth=datetime.date(2015, 1, 1)), "18"),
]


@pytest.mark.parametrize(("value", "hint"), NATIONAL_ID_CASES)
def test_bad_national_id_is_refused(origination_api, payload, settings, value, hint):
    settings.LANGUAGE_CODE = "en"
    response = origination_api.post(URL, payload(national_id=value), format="json", HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400, response.json()
    assert list(response.json()) == ["national_id"]
    assert hint in response.json()["national_id"][0]
    assert nothing_stored()


@pytest.mark.parametrize("value", ["1381234567", "23812345678", "12812345678", "138-1234-5678", "+8613812345678"])
def test_bad_phone_is_refused(origination_api, payload, value):
    response = origination_api.post(URL, payload(phone=value), format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["phone"]
    assert nothing_stored()


def _consent(**changes):
    return {"consent": changes}


BAD_FIELDS = [
    ({"province": "990000"}, ["province"]),
    ({"province": "310100"}, ["province"]),
    ({"city": "320100"}, ["city"]),  # Nanjing is not in Shanghai
    ({"requested_amount": "0.00"}, ["requested_amount"]),
    ({"requested_amount": "12.345"}, ["requested_amount"]),
    ({"expected_apr": "1.5"}, ["expected_apr"]),
    ({"credit_grade": "Z"}, ["credit_grade"]),
    ({"decline_reasons": []}, ["decline_reasons"]),
    ({"declined_at": "2099-01-01T00:00:00+08:00"}, ["declined_at"]),
    ({"external_id": ""}, ["external_id"]),
]


@pytest.mark.parametrize(("changes", "fields"), BAD_FIELDS)
def test_bad_applicant_field_names_it_and_stores_nothing(origination_api, payload, changes, fields):
    response = origination_api.post(URL, payload(**changes), format="json")
    assert response.status_code == 400
    assert sorted(response.json()) == fields
    assert nothing_stored()


BAD_CONSENT = [
    ({"text_code": "no-such-text"}, "text_code"),
    ({"text_sha256": "0" * 64}, "text_sha256"),
    ({"text_sha256": "xyz"}, "text_sha256"),
    ({"partners": []}, "partners"),
    ({"partners": ["PARTNER_A", "NOBODY"]}, "partners"),
    ({"data_categories": ["identity", "credit_history"]}, "data_categories"),
    ({"purposes": ["reclaim_offer"]}, "purposes"),
    ({"purposes": ["loan_referral", "marketing"]}, "purposes"),
    ({"channel": "sms"}, "channel"),
    ({"granted_at": "2099-01-01T00:00:00+08:00"}, "granted_at"),
    ({"ip": "not-an-ip"}, "ip"),
    ({"evidence_sha256": "short"}, "evidence_sha256"),
    ({"expires_at": "2020-01-01T00:00:00+08:00"}, "expires_at"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_CONSENT)
def test_bad_consent_field_names_it_and_stores_nothing(origination_api, payload, changes, field):
    body = payload()
    body["consent"].update(changes)
    response = origination_api.post(URL, body, format="json")
    assert response.status_code == 400, response.json()
    assert list(response.json()) == ["consent"]
    assert list(response.json()["consent"]) == [field]
    assert nothing_stored()


def test_grant_time_in_the_near_future_within_clock_skew_is_accepted(origination_api, payload):
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    body = payload()
    body["consent"]["granted_at"] = soon.isoformat()
    assert origination_api.post(URL, body, format="json").status_code == 201


def test_same_body_again_is_200_with_the_same_result(origination_api, payload):
    body = payload()
    first = origination_api.post(URL, body, format="json")
    reordered = dict(reversed(list(copy.deepcopy(body).items())))  # key order does not matter
    second = origination_api.post(URL, reordered, format="json")
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == first.json()
    assert Applicant.objects.count() == 1
    assert ConsentEvent.objects.count() == 1


def test_different_body_under_the_same_external_id_is_409(origination_api, payload):
    origination_api.post(URL, payload(), format="json")
    response = origination_api.post(URL, payload(requested_amount="60000.00"), format="json")
    assert response.status_code == 409
    assert "external_id" in response.json()
    assert Applicant.objects.get().requested_amount == 50000


def test_get_applicant_answers_in_the_intake_shape(api, compliance_officer, origination_api, payload):
    created = origination_api.post(URL, payload(), format="json").json()
    fetched = api(compliance_officer).get(f"{URL}{created['id']}/").json()
    assert fetched == created
    found = api(compliance_officer).get(f"{URL}?external_id=APP-2026-000001").json()["results"]
    assert [a["id"] for a in found] == [created["id"]]


def test_batch_with_mixed_items(origination_api, payload):
    good = [payload(seq=i) for i in range(1, 4)]
    bad_phone = payload(seq=4, phone="123")
    replay = good[0]
    conflict = payload(seq=1, requested_amount="1.00")
    items = [good[0], bad_phone, good[1], replay, conflict, good[2], "not an object"]
    response = origination_api.post(f"{URL}batch/", {"items": items}, format="json")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 400, 201, 200, 409, 201, 400]
    assert "phone" in results[1]["errors"]
    assert results[3]["id"] == results[0]["id"]
    assert Applicant.objects.count() == 3
    assert ConsentEvent.objects.filter(type="granted").count() == 3


def test_batch_of_1000_uses_a_bounded_number_of_queries(
    origination_api, payload, partners, partnership_manager, compliance_officer, django_assert_max_num_queries
):
    for partner in partners:
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer, eligibility={})
    items = [payload(seq=i) for i in range(1, 1001)]
    # Bulk inserts: a few statements per table (SQLite splits them by its 999-parameter limit),
    # one query per lookup kind, a few for the caps — not round trips per applicant (10,000+).
    with django_assert_max_num_queries(250):
        response = origination_api.post(f"{URL}batch/", {"items": items}, format="json")
    assert response.status_code == 200
    assert {r["status"] for r in response.json()["results"]} == {201}
    assert Applicant.objects.count() == 1000
    assert ConsentRecipient.objects.count() == 2000
    assert Referral.objects.count() == 2000
    assert Dispatch.objects.filter(kind="probe").count() == 2000


@pytest.mark.parametrize("body", [{}, {"items": []}, {"items": "x"}])
def test_batch_envelope_errors_name_items(origination_api, body):
    response = origination_api.post(f"{URL}batch/", body, format="json")
    assert response.status_code == 400
    assert "items" in response.json()


def test_batch_over_1000_is_refused(origination_api, payload):
    response = origination_api.post(f"{URL}batch/", {"items": [{}] * 1001}, format="json")
    assert response.status_code == 400
    assert "items" in response.json()


@pytest.mark.parametrize("external_id", [{}, [], None])
def test_an_external_id_of_the_wrong_type_is_a_400_not_a_500(origination_api, payload, external_id):
    response = origination_api.post(URL, payload(external_id=external_id), format="json")
    assert response.status_code == 400
    assert "external_id" in response.json()
    batch = origination_api.post(f"{URL}batch/", {"items": [payload(external_id=external_id)]}, format="json")
    assert batch.json()["results"][0]["status"] == 400


def test_the_api_takes_json_only(origination_api, payload):
    response = origination_api.post(URL, {"external_id": "X"}, format="multipart")
    assert response.status_code == 415
    assert nothing_stored()


def test_nul_characters_are_a_field_error_on_every_database(origination_api, payload):
    body = payload(external_id="APP\x00-1")
    body["consent"]["text_code"] = "referral\x00"
    body["consent"]["partners"] = ["PARTNER_A\x00"]
    response = origination_api.post(URL, body, format="json")
    assert response.status_code == 400
    assert "external_id" in response.json()
    assert nothing_stored()
