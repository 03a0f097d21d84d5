"""Dispatch through the protocol-v1 connector, with the partner stubbed at the HTTP boundary."""

from __future__ import annotations

import datetime
import json

import pytest
import requests
import responses
from django.utils import timezone

from partners import signing
from partners.models import PartnerCircuit
from referrals.models import ConsentEvent, Dispatch, DispatchAttempt, Referral
from referrals.services import consents as consent_services
from referrals.services.dispatch import dispatch_send, dispatch_sweep
from referrals.services.selection import referral_select
from tests.factories import make_contract

URL = "/api/v1/applicants/"
A = "http://127.0.0.1:9100/partner_a"
B = "http://127.0.0.1:9100/partner_b"


@pytest.fixture
def contracts(partners, partnership_manager, compliance_officer):
    data_fields = [
        "name",
        "national_id",
        "phone",
        "province",
        "requested_amount",
        "requested_term_months",
        "monthly_income",
    ]
    return [
        make_contract(partners[0], drafter=partnership_manager, approver=compliance_officer, priority=20, data_fields=data_fields),
        make_contract(partners[1], drafter=partnership_manager, approver=compliance_officer, priority=10, data_fields=data_fields),
    ]  # fmt: skip


@pytest.fixture
def applicant(origination_api, payload, contracts):
    response = origination_api.post(URL, payload(name="张三", phone="13812345678"), format="json")
    assert response.status_code == 201
    return response.json()


def probe(partner_code: str) -> Dispatch:
    return Dispatch.objects.get(kind="probe", partner__code=partner_code)


def answer(url: str, body: dict | None = None, status: int = 200, **kwargs):
    responses.add(responses.POST, url, json=body, status=status, **kwargs)


def sent_body(call) -> dict:
    return json.loads(call.request.body)


@responses.activate
def test_probe_carries_hashes_only_and_is_signed_and_ledgered(applicant, partners):
    answer(f"{A}/probe", {"decision": "decline", "reason": "known customer"})
    assert dispatch_send(probe("PARTNER_A").pk) == "succeeded"
    [call] = responses.calls
    body = sent_body(call)
    assert set(body) == {
        "referral_id",
        "phone_hash",
        "hash_alg",
        "province",
        "requested_amount",
        "requested_term_months",
    }
    phone = Referral.objects.get(partner__code="PARTNER_A").applicant.phone
    assert body["phone_hash"] == signing.phone_hash(phone, "hmac_sha256", partners[0].api_secret)
    raw = call.request.body.decode()
    assert phone not in raw
    assert "张三" not in raw
    assert "credit" not in raw
    signing.verify(partners[0].api_secret, call.request.headers, call.request.body)
    event = ConsentEvent.objects.get(type="probe_sent")
    assert event.payload["partner"] == "PARTNER_A"
    assert event.payload["fields"] == ["phone_hash", "province", "requested_amount", "requested_term_months"]
    referral = Referral.objects.get(partner__code="PARTNER_A")
    assert (referral.status, referral.status_reason) == ("probe_declined", "known customer")


@responses.activate
def test_consent_categories_limit_the_probe(origination_api, payload, contracts):
    body = payload()
    body["consent"]["data_categories"] = ["identity", "contact"]
    origination_api.post(URL, body, format="json")
    answer(f"{A}/probe", {"decision": "decline"})
    dispatch_send(probe("PARTNER_A").pk)
    assert set(sent_body(responses.calls[0])) == {"referral_id", "phone_hash", "hash_alg"}


@responses.activate
def test_application_goes_to_the_highest_priority_acceptor_with_only_consented_fields(
    origination_api, payload, contracts
):
    body = payload()
    body["consent"]["data_categories"] = ["identity", "contact", "location", "loan_request"]  # no income
    origination_api.post(URL, body, format="json")
    answer(f"{A}/probe", {"decision": "accept"})
    answer(f"{B}/probe", {"decision": "accept"})
    answer(f"{A}/applications", {"application_id": "A-1", "decision": "accepted"})
    dispatch_send(probe("PARTNER_B").pk)
    assert not Dispatch.objects.filter(kind="application").exists()  # A (higher priority) has not answered yet
    dispatch_send(probe("PARTNER_A").pk)
    application = Dispatch.objects.get(kind="application")
    assert application.partner.code == "PARTNER_A"
    assert dispatch_send(application.pk) == "succeeded"
    sent = sent_body(responses.calls[-1])
    assert set(sent["applicant"]) == {
        "name",
        "national_id",
        "phone",
        "province",
        "requested_amount",
        "requested_term_months",
    }
    assert "monthly_income" not in sent["applicant"]  # the contract asks for it, the consent does not cover it
    assert "credit_grade" not in json.dumps(sent)
    assert "decline_reasons" not in json.dumps(sent)
    assert responses.calls[-1].request.headers["Idempotency-Key"] == str(application.referral_id)
    statuses = dict(Referral.objects.values_list("partner__code", "status"))
    assert statuses == {"PARTNER_A": "submitted", "PARTNER_B": "not_selected"}
    a = Referral.objects.get(partner__code="PARTNER_A")
    assert (a.application_id, a.accepted_at is not None) == ("A-1", True)
    event = ConsentEvent.objects.get(type="application_sent")
    assert event.payload["fields"] == [
        "name",
        "national_id",
        "phone",
        "province",
        "requested_amount",
        "requested_term_months",
    ]


@responses.activate
def test_rejection_falls_through_to_the_next_acceptor(applicant):
    answer(f"{A}/probe", {"decision": "accept"})
    answer(f"{B}/probe", {"decision": "accept"})
    answer(f"{A}/applications", {"application_id": "A-1", "decision": "rejected", "reason": "risk"})
    answer(f"{B}/applications", {"application_id": "B-9", "decision": "accepted"})
    dispatch_send(probe("PARTNER_A").pk)
    dispatch_send(probe("PARTNER_B").pk)
    dispatch_send(Dispatch.objects.get(kind="application", partner__code="PARTNER_A").pk)
    dispatch_send(Dispatch.objects.get(kind="application", partner__code="PARTNER_B").pk)
    assert dict(Referral.objects.values_list("partner__code", "status")) == {
        "PARTNER_A": "rejected",
        "PARTNER_B": "submitted",
    }


@responses.activate
def test_silence_past_the_probe_window_counts_as_decline(applicant, settings):
    answer(f"{B}/probe", {"decision": "accept"})
    answer(f"{B}/applications", {"application_id": "B-1", "decision": "accepted"})
    dispatch_send(probe("PARTNER_B").pk)
    assert not Dispatch.objects.filter(kind="application").exists()  # waiting for A, which outranks B
    later = timezone.now() + datetime.timedelta(seconds=settings.SPILLWAY_PROBE_WINDOW_SECONDS + 1)
    result = dispatch_sweep(now=later)
    assert result["probe_windows_closed"] == 1
    a = Referral.objects.get(partner__code="PARTNER_A")
    assert (a.status, a.status_reason) == ("probe_declined", "no answer within the probe window")
    assert Dispatch.objects.get(kind="application").partner.code == "PARTNER_B"


@pytest.mark.parametrize(
    "failure",
    [
        {"body": requests.exceptions.ConnectTimeout()},
        {"body": requests.exceptions.ReadTimeout()},
        {"body": requests.exceptions.ConnectionError()},
        {"json": {}, "status": 503},
        {"json": {}, "status": 500},
        {"json": {}, "status": 429},
    ],
    ids=["connect-timeout", "read-timeout", "refused", "503", "500", "429"],
)
@responses.activate
def test_transient_failures_are_retried_with_backoff(applicant, failure):
    responses.add(responses.POST, f"{A}/probe", **failure)
    before = timezone.now()
    assert dispatch_send(probe("PARTNER_A").pk) == "retry"
    dispatch = probe("PARTNER_A")
    assert (dispatch.status, dispatch.attempts) == ("pending", 1)
    delay = (dispatch.next_attempt_at - before).total_seconds()
    assert 30 * 0.8 - 1 <= delay <= 30 * 1.2 + 1  # 30 s with ±20 % jitter
    assert DispatchAttempt.objects.get(dispatch=dispatch).outcome == "transient"
    assert Referral.objects.get(partner__code="PARTNER_A").status == "probing"


@pytest.mark.parametrize("status", [400, 401, 404, 422])
@responses.activate
def test_other_4xx_fail_without_retry(applicant, status):
    answer(f"{A}/probe", {}, status=status)
    assert dispatch_send(probe("PARTNER_A").pk) == "failed"
    dispatch = probe("PARTNER_A")
    assert (dispatch.status, dispatch.attempts) == ("failed", 1)
    referral = Referral.objects.get(partner__code="PARTNER_A")
    assert referral.status == "failed"
    assert f"HTTP {status}" in referral.status_reason


@responses.activate
def test_backoff_schedule_then_failed_after_the_last_retry(applicant):
    responses.add(responses.POST, f"{A}/probe", json={}, status=503)
    dispatch_id = probe("PARTNER_A").pk
    delays = []
    for attempt in range(1, 7):
        Dispatch.objects.filter(pk=dispatch_id).update(next_attempt_at=timezone.now())
        PartnerCircuit.objects.filter(partner__code="PARTNER_A").update(open_until=None, consecutive_failures=0)
        start = timezone.now()
        outcome = dispatch_send(dispatch_id)
        if attempt < 6:
            assert outcome == "retry"
            delays.append((Dispatch.objects.get(pk=dispatch_id).next_attempt_at - start).total_seconds())
    assert outcome == "failed"
    for got, base in zip(delays, [30, 120, 600, 3600, 21600], strict=True):
        assert base * 0.8 - 1 <= got <= base * 1.2 + 1
    assert DispatchAttempt.objects.filter(dispatch_id=dispatch_id).count() == 6


@responses.activate
def test_the_idempotency_key_is_the_same_on_every_retry(applicant):
    answer(f"{A}/probe", {"decision": "accept"})
    answer(f"{B}/probe", {"decision": "decline"})
    dispatch_send(probe("PARTNER_A").pk)
    dispatch_send(probe("PARTNER_B").pk)
    application = Dispatch.objects.get(kind="application")
    responses.add(responses.POST, f"{A}/applications", body=requests.exceptions.ReadTimeout())
    responses.add(responses.POST, f"{A}/applications", json={}, status=502)
    responses.add(responses.POST, f"{A}/applications", json={"application_id": "A-7", "decision": "accepted"})
    for _ in range(3):
        Dispatch.objects.filter(pk=application.pk).update(next_attempt_at=timezone.now())
        dispatch_send(application.pk)
    keys = [c.request.headers["Idempotency-Key"] for c in responses.calls if c.request.url.endswith("/applications")]
    assert keys == [str(application.referral_id)] * 3
    assert Referral.objects.get(pk=application.referral_id).status == "submitted"
    assert ConsentEvent.objects.filter(type="application_sent").count() == 3  # every attempt is a provision


@responses.activate
def test_circuit_opens_after_repeated_failures_and_defers_instead_of_failing(
    origination_api, payload, contracts, settings
):
    settings.SPILLWAY_CIRCUIT_FAILURES = 3
    origination_api.post(f"{URL}batch/", {"items": [payload(seq=i) for i in range(1, 6)]}, format="json")
    responses.add(responses.POST, f"{A}/probe", json={}, status=503)
    probes = list(Dispatch.objects.filter(kind="probe", partner__code="PARTNER_A").order_by("pk"))
    outcomes = [dispatch_send(d.pk) for d in probes]
    assert outcomes == ["retry", "retry", "retry", "skipped", "skipped"]
    assert PartnerCircuit.objects.get(partner__code="PARTNER_A").state == "open"
    deferred = Dispatch.objects.get(pk=probes[3].pk)
    assert (deferred.status, deferred.attempts, deferred.last_error) == ("pending", 0, "circuit open")
    assert len(responses.calls) == 3  # nothing more hammered the partner


@responses.activate
def test_half_open_trial_closes_the_circuit_on_success(applicant, settings):
    PartnerCircuit.objects.create(
        partner=probe("PARTNER_A").partner,
        consecutive_failures=9,
        open_until=timezone.now() - datetime.timedelta(seconds=1),
    )
    answer(f"{A}/probe", {"decision": "decline"})
    assert dispatch_send(probe("PARTNER_A").pk) == "succeeded"
    assert PartnerCircuit.objects.get(partner__code="PARTNER_A").state == "closed"


@responses.activate
def test_paused_partner_waits(applicant, partners):
    partners[0].paused = True
    partners[0].save()
    assert dispatch_send(probe("PARTNER_A").pk) == "skipped"
    assert probe("PARTNER_A").status == "pending"
    assert not responses.calls


@responses.activate
def test_withdrawal_cancels_queued_work_and_nothing_is_sent_after(applicant, origination):
    consent = Referral.objects.first().consent
    result = consent_services.consent_withdraw(actor=origination, consent=consent, channel="app")
    assert sorted(map(str, result.cancelled_referrals)) == sorted(str(r.pk) for r in Referral.objects.all())
    assert set(Dispatch.objects.filter(kind="probe").values_list("status", flat=True)) == {"cancelled"}
    assert dispatch_send(probe("PARTNER_A").pk) == "skipped"
    assert not responses.calls
    assert not Dispatch.objects.filter(kind="withdrawal_notice").exists()  # nobody received anything


@responses.activate
def test_claim_refuses_when_the_consent_no_longer_covers_the_partner(applicant):
    consent = Referral.objects.first().consent
    consent.recipients.filter(partner__code="PARTNER_A").delete()  # as if the partner had not been named
    assert dispatch_send(probe("PARTNER_A").pk) == "skipped"
    dispatch = probe("PARTNER_A")
    assert (dispatch.status, dispatch.last_error) == ("cancelled", "partner not named in the consent")
    assert DispatchAttempt.objects.get(dispatch=dispatch).outcome == "refused"
    assert not responses.calls
    assert not ConsentEvent.objects.filter(type="probe_sent").exists()


@responses.activate
def test_expired_consent_stops_sending_even_before_the_expiry_task(applicant):
    consent = Referral.objects.first().consent
    type(consent).objects.filter(pk=consent.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert dispatch_send(probe("PARTNER_A").pk) == "skipped"
    assert probe("PARTNER_A").last_error == "consent expired"
    assert not responses.calls


@responses.activate
def test_partners_that_received_data_get_a_withdrawal_notice_until_acknowledged(applicant, origination):
    answer(f"{A}/probe", {"decision": "accept"})
    dispatch_send(probe("PARTNER_A").pk)  # A received a probe; B received nothing
    consent = Referral.objects.first().consent
    consent_services.consent_withdraw(actor=origination, consent=consent, channel="app", reason="投诉")
    [notice] = Dispatch.objects.filter(kind="withdrawal_notice")
    assert (notice.partner.code, notice.idempotency_key) == ("PARTNER_A", f"{consent.pk}:PARTNER_A")
    responses.add(responses.POST, f"{A}/withdrawals", json={}, status=500)
    responses.add(responses.POST, f"{A}/withdrawals", json={"acknowledged": True})
    assert dispatch_send(notice.pk) == "retry"
    Dispatch.objects.filter(pk=notice.pk).update(next_attempt_at=timezone.now())
    assert dispatch_send(notice.pk) == "succeeded"
    sent = sent_body(responses.calls[-1])
    assert sent["consent_id"] == str(consent.pk)
    assert responses.calls[-1].request.headers["Idempotency-Key"] == f"{consent.pk}:PARTNER_A"
    types = list(consent.events.order_by("seq").values_list("type", flat=True))
    assert types == ["granted", "probe_sent", "withdrawn", "withdrawal_notice_sent", "withdrawal_notice_sent",
                     "withdrawal_acknowledged"]  # fmt: skip


def test_sweeper_recovers_expired_leases_and_lost_messages(applicant):
    dispatch = probe("PARTNER_A")
    past = timezone.now() - datetime.timedelta(minutes=5)
    Dispatch.objects.filter(pk=dispatch.pk).update(status="in_flight", attempts=1, lease_expires_at=past)
    other = probe("PARTNER_B")
    Dispatch.objects.filter(pk=other.pk).update(enqueued_at=past)  # its message was lost long ago
    result = dispatch_sweep()
    assert result["lease_expired"] == 1
    assert result["enqueued"] == 2
    assert probe("PARTNER_A").status == "pending"


def test_one_sweep_takes_a_backlog_bigger_than_its_batch(applicant, monkeypatch):
    """A mass failure (every lease expired at once) goes out in one sweep, batch after batch."""
    past = timezone.now() - datetime.timedelta(minutes=5)
    Dispatch.objects.update(status="in_flight", attempts=1, lease_expires_at=past)
    total = Dispatch.objects.count()
    assert total >= 2
    sent = []
    monkeypatch.setattr("referrals.tasks.dispatch_send_task.delay", lambda ids: sent.extend(ids))
    result = dispatch_sweep(limit=1)
    assert (result["lease_expired"], result["enqueued"]) == (total, total)
    assert sorted(sent) == sorted(Dispatch.objects.values_list("pk", flat=True))
    assert not Dispatch.objects.filter(enqueued_at__isnull=True).exists()


def test_selection_is_idempotent(applicant):
    Referral.objects.filter(partner__code="PARTNER_A").update(status="probe_accepted")
    Referral.objects.filter(partner__code="PARTNER_B").update(status="probe_declined")
    applicant_id = Referral.objects.first().applicant_id
    assert len(referral_select(applicant_id)) == 1
    assert referral_select(applicant_id) == []
    assert Dispatch.objects.filter(kind="application").count() == 1
