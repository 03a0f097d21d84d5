"""Consent texts, withdrawal, expiry, reveal and evidence export."""

from __future__ import annotations

import datetime
import hashlib
import json

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from referrals import merkle
from referrals.models import Consent, ConsentEvent, ConsentText
from referrals.services import consents as consent_services
from referrals.services import ledger

URL = "/api/v1/applicants/"


@pytest.fixture
def created(origination_api, payload):
    response = origination_api.post(
        URL, payload(name="张三", phone="13812345678", national_id="11010519491231002X"), format="json"
    )
    assert response.status_code == 201
    return response.json()


# --- consent texts --------------------------------------------------------------------------------
def test_consent_text_api_computes_the_hash(api, compliance_officer):
    body = {"code": "referral-consent-v4", "language": "zh-hans", "body": "同意书正文……", "validity_days": 90}
    response = api(compliance_officer).post("/api/v1/consent-texts/", body, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["sha256"] == hashlib.sha256("同意书正文……".encode()).hexdigest()


def test_consent_texts_are_immutable(api, compliance_officer, text):
    client = api(compliance_officer)
    again = client.post(
        "/api/v1/consent-texts/", {"code": text.code, "body": "新的措辞", "validity_days": 30}, format="json"
    )
    assert again.status_code == 400
    assert "code" in again.json()
    assert client.patch(f"/api/v1/consent-texts/{text.code}/", {"body": "x"}, format="json").status_code == 405
    assert ConsentText.objects.get(code=text.code).body == text.body


@pytest.mark.parametrize(
    ("field", "value"), [("validity_days", 0), ("code", "Bad Code"), ("body", ""), ("language", "fr")]
)
def test_bad_consent_text_names_the_field(api, compliance_officer, field, value):
    body = {"code": "referral-consent-v9", "body": "正文", "validity_days": 30, field: value}
    response = api(compliance_officer).post("/api/v1/consent-texts/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()


# --- withdrawal -----------------------------------------------------------------------------------
def test_withdrawal_through_the_api_is_recorded(origination_api, created):
    consent_id = created["consent"]["id"]
    response = origination_api.post(
        f"/api/v1/consents/{consent_id}/withdraw/",
        {"withdrawn_at": timezone.now().isoformat(), "channel": "app", "reason": "不再需要"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json() == {"status": "withdrawn", "cancelled_referrals": []}
    consent = Consent.objects.get(pk=consent_id)
    assert (consent.status, consent.withdrawal_channel, consent.withdrawal_reason) == ("withdrawn", "app", "不再需要")
    last = consent.events.order_by("-seq").first()
    assert (last.seq, last.type, last.payload["channel"]) == (2, "withdrawn", "app")


def test_withdrawing_twice_changes_nothing(origination_api, created):
    url = f"/api/v1/consents/{created['consent']['id']}/withdraw/"
    origination_api.post(url, {"channel": "app"}, format="json")
    second = origination_api.post(url, {"channel": "app"}, format="json")
    assert second.status_code == 200
    assert second.json()["status"] == "withdrawn"
    assert ConsentEvent.objects.filter(type="withdrawn").count() == 1


def test_withdrawal_errors_name_the_field(origination_api, created):
    url = f"/api/v1/consents/{created['consent']['id']}/withdraw/"
    response = origination_api.post(url, {"channel": "pigeon"}, format="json")
    assert response.status_code == 400
    assert "channel" in response.json()
    response = origination_api.post(url, {"channel": "app", "withdrawn_at": "2099-01-01T00:00:00Z"}, format="json")
    assert "withdrawn_at" in response.json()
    assert Consent.objects.get().status == "granted"


def test_unknown_consent_is_404(origination_api, db):
    response = origination_api.post(
        "/api/v1/consents/00000000-0000-0000-0000-000000000000/withdraw/", {"channel": "app"}
    )
    assert response.status_code == 404


def test_an_expired_consent_can_still_be_withdrawn(origination, created):
    consent = Consent.objects.get()
    Consent.objects.filter(pk=consent.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert consent_services.consents_expire_due() == 1
    result = consent_services.consent_withdraw(actor=origination, consent=consent, channel="call_center")
    assert result.consent.status == "withdrawn"
    assert list(consent.events.order_by("seq").values_list("type", flat=True)) == ["granted", "expired", "withdrawn"]


# --- expiry ---------------------------------------------------------------------------------------
def test_expiry_applies_only_to_due_granted_consents_and_is_recorded(created, origination_api, payload):
    other = origination_api.post(URL, payload(seq=2), format="json").json()
    due = Consent.objects.get(pk=created["consent"]["id"])
    Consent.objects.filter(pk=due.pk).update(expires_at=timezone.now() - datetime.timedelta(minutes=1))
    assert consent_services.consents_expire_due() == 1
    assert consent_services.consents_expire_due() == 0  # idempotent
    due.refresh_from_db()
    assert (due.status, due.expired_at) == ("expired", due.expires_at)
    event = due.events.get(type="expired")
    assert event.payload["expires_at"] == merkle.utc_iso(due.expires_at)
    assert Consent.objects.get(pk=other["consent"]["id"]).status == "granted"


def test_expiry_task_runs_the_service(created):
    from referrals.tasks import consents_expire_due_task

    Consent.objects.update(expires_at=timezone.now() - datetime.timedelta(minutes=1))
    assert consents_expire_due_task() == 1


# --- events API -----------------------------------------------------------------------------------
def test_events_endpoint_lists_the_chain(api, compliance_officer, origination, created):
    consent = Consent.objects.get()
    consent_services.consent_withdraw(actor=origination, consent=consent, channel="app")
    response = api(compliance_officer).get(f"/api/v1/consents/{consent.pk}/events/")
    assert response.status_code == 200
    events = response.json()
    assert [(e["seq"], e["type"]) for e in events] == [(1, "granted"), (2, "withdrawn")]
    assert events[1]["prev_hash"] == events[0]["hash"]
    assert set(events[0]) >= {"seq", "type", "occurred_at", "payload", "prev_hash", "hash"}


# --- reveal ---------------------------------------------------------------------------------------
def test_reveal_is_refused_without_the_permission(auditor, created):
    applicant = Consent.objects.get().applicant
    with pytest.raises(PermissionDenied):
        consent_services.applicant_reveal(actor=auditor, applicant=applicant, fields=["phone"], reason="核实投诉")
    assert not ConsentEvent.objects.filter(type="pii_revealed").exists()


def test_reveal_needs_a_reason_and_is_recorded(compliance_officer, created):
    applicant = Consent.objects.get().applicant
    with pytest.raises(ValidationError):
        consent_services.applicant_reveal(actor=compliance_officer, applicant=applicant, fields=["phone"], reason=" ")
    clear = consent_services.applicant_reveal(
        actor=compliance_officer, applicant=applicant, fields=["phone", "name"], reason="客户来电投诉，核实身份"
    )
    assert clear == {"name": "张三", "phone": "13812345678"}
    event = ConsentEvent.objects.get(type="pii_revealed")
    assert event.payload == {"by": "compliance", "fields": ["name", "phone"], "reason": "客户来电投诉，核实身份"}


# --- evidence export ------------------------------------------------------------------------------
def verify_bundle_like_an_outsider(bundle: dict, checkpoint_files: dict[int, dict]) -> None:
    """The procedure of docs/compliance.md, with nothing from Spillway but the merkle helpers'
    published algorithm (re-implemented by the outsider's script in docs/)."""
    for text in bundle["consent_texts"]:
        assert hashlib.sha256(text["body"].encode()).hexdigest() == text["sha256"]
    for consent in bundle["consents"]:
        previous = "0" * 64
        for seq, entry in enumerate(consent["events"], start=1):
            document = entry["document"]
            assert document["seq"] == seq
            assert document["prev_hash"] == previous
            digest = hashlib.sha256(
                json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            ).hexdigest()
            assert digest == entry["hash"]
            previous = digest
            if entry["checkpoint"] is not None:
                root = checkpoint_files[entry["checkpoint"]]["root"]
                assert merkle.verify_inclusion(
                    bytes.fromhex(digest), entry["leaf_index"], entry["tree_size"], entry["inclusion_proof"], root
                )


def test_evidence_bundle_verifies_independently_and_the_export_is_recorded(
    compliance_officer, origination, origination_api, payload, created, settings
):
    origination_api.post(URL, payload(seq=2), format="json")  # someone else's events in the same checkpoint
    consent = Consent.objects.get(pk=created["consent"]["id"])
    consent_services.consent_withdraw(actor=origination, consent=consent, channel="app", reason="投诉")
    checkpoint = ledger.ledger_checkpoint()
    applicant = consent.applicant

    bundle = consent_services.evidence_export(actor=compliance_officer, applicant=applicant)

    assert bundle["applicant"]["phone"] == "138****5678"
    assert "13812345678" not in json.dumps(bundle, ensure_ascii=False)
    [entry] = bundle["consents"]
    assert [e["document"]["type"] for e in entry["events"]] == ["granted", "withdrawn"]
    assert bundle["consent_texts"][0]["body"] == consent.text.body
    files = {
        cp["checkpoint"]: json.loads(
            (settings.SPILLWAY_CHECKPOINT_DIR / ledger.checkpoint_file_name(checkpoint)).read_text()
        )
        for cp in bundle["checkpoints"]
    }
    verify_bundle_like_an_outsider(bundle, files)
    recorded = consent.events.order_by("-seq").first()
    assert recorded.type == "evidence_exported"
    assert recorded.payload["bundle_sha256"] == hashlib.sha256(merkle.canonical_json(bundle)).hexdigest()


def test_evidence_export_needs_its_permission(auditor, created):
    with pytest.raises(PermissionDenied):
        consent_services.evidence_export(actor=auditor, applicant=Consent.objects.get().applicant)
    assert not ConsentEvent.objects.filter(type="evidence_exported").exists()


def test_the_documented_verifier_accepts_a_real_bundle_and_rejects_a_doctored_one(
    compliance_officer, created, settings, tmp_path
):
    import subprocess
    import sys
    from pathlib import Path

    checkpoint = ledger.ledger_checkpoint()
    bundle = consent_services.evidence_export(actor=compliance_officer, applicant=Consent.objects.get().applicant)
    bundle_path = tmp_path / "evidence.json"
    bundle_path.write_text(json.dumps(bundle, ensure_ascii=False))
    checkpoint_file = settings.SPILLWAY_CHECKPOINT_DIR / ledger.checkpoint_file_name(checkpoint)
    script = Path(__file__).resolve().parents[2] / "docs" / "verify_evidence.py"

    run = subprocess.run([sys.executable, script, bundle_path, checkpoint_file], capture_output=True, text=True)  # noqa: S603
    assert run.returncode == 0, run.stdout
    assert run.stdout.startswith("OK")

    bundle["consents"][0]["events"][0]["document"]["payload"]["purposes"] = ["loan_referral", "marketing"]
    bundle_path.write_text(json.dumps(bundle, ensure_ascii=False))
    run = subprocess.run([sys.executable, script, bundle_path, checkpoint_file], capture_output=True, text=True)  # noqa: S603
    assert run.returncode == 1
    assert "hash does not match" in run.stdout
