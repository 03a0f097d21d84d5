"""The partner simulator speaks protocol v1 over real HTTP, with secrets read from the database.

The server runs in a thread on an ephemeral port. Partner secrets are loaded from the database in
the test's own thread (the test transaction is invisible to other connections), and the long
refresh interval keeps the server threads on that cache — so these tests need no committed data
and leave the database as they found it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
import requests

from partners import signing
from partners.models import Partner
from partners.simulator import (
    CredentialStore,
    PartnerCredentials,
    PartnerSimulator,
    SimulatorConfig,
    _Handler,
    load_partner_credentials,
)
from tests.factories import PartnerFactory

pytestmark = pytest.mark.django_db

PHONE = "13812345678"
SECRET = "secret-sim-a"


@pytest.fixture
def partner():
    return PartnerFactory(code="SIM_A", api_secret="secret-sim-a", api_base_url="http://127.0.0.1:9100/sim_a")


@pytest.fixture
def run_simulator():
    started: list[PartnerSimulator] = []

    def run(**config) -> PartnerSimulator:
        credentials = config.pop("credentials", None) or CredentialStore(refresh_seconds=3600, min_reload_seconds=3600)
        simulator = PartnerSimulator(SimulatorConfig(**{"seed": 7, **config}), port=0, credentials=credentials)
        simulator.credentials.reload()  # from the database, in this thread
        simulator.start()
        started.append(simulator)
        return simulator

    yield run
    for simulator in started:
        simulator.stop()


@pytest.fixture
def simulator(run_simulator, partner):
    return run_simulator()


def post(simulator, segment, action, payload, *, secret=SECRET, timestamp=None, headers=None, sign=True):
    body = json.dumps(payload).encode()
    sent = {"Content-Type": "application/json"}
    if sign:
        sent.update(signing.sign(secret, body, timestamp=timestamp))
    sent.update(headers or {})
    return requests.post(f"{simulator.url}/{segment}/{action}", data=body, headers=sent, timeout=5)


def probe_payload(referral_id=None, *, secret=SECRET, alg="hmac_sha256") -> dict:
    return {
        "referral_id": referral_id or str(uuid.uuid4()),
        "phone_hash": signing.phone_hash(PHONE, alg, secret),
        "hash_alg": alg,
        "province": "310000",
        "requested_amount": "50000.00",
        "requested_term_months": 12,
    }


def application_payload(referral_id: str, **applicant) -> dict:
    return {
        "referral_id": referral_id,
        "applicant": {
            "name": "张伟",
            "phone": PHONE,
            "province": "310000",
            "requested_amount": "50000.00",
            "requested_term_months": 12,
            **applicant,
        },
        "consent": {
            "id": str(uuid.uuid4()),
            "text_code": "referral-consent-v3",
            "granted_at": "2026-11-28T10:00:00+08:00",
            "expires_at": "2027-02-26T10:00:00+08:00",
        },
    }


# --- probes ------------------------------------------------------------------------------------
def test_signed_probe_gets_a_decision(simulator):
    response = post(simulator, "sim_a", "probe", probe_payload())

    assert response.status_code == 200
    body = response.json()
    assert body["decision"] in {"accept", "decline"}
    assert body["reason"]


@pytest.mark.parametrize(("rate", "decision"), [(1.0, "accept"), (0.0, "decline")])
def test_probe_accept_rate_decides(run_simulator, partner, rate, decision):
    simulator = run_simulator(probe_accept_rate=rate)

    decisions = {post(simulator, "sim_a", "probe", probe_payload()).json()["decision"] for _ in range(5)}

    assert decisions == {decision}


def test_decisions_are_reproducible_with_the_same_seed(run_simulator, partner):
    referral_ids = [str(uuid.uuid4()) for _ in range(12)]
    first, second = run_simulator(seed=42), run_simulator(seed=42)

    answers = [
        [post(sim, "sim_a", "probe", probe_payload(referral_id)).json() for referral_id in referral_ids]
        for sim in (first, second)
    ]

    assert answers[0] == answers[1]
    assert {answer["decision"] for answer in answers[0]} == {"accept", "decline"}  # 0.7 of 12: both occur


def test_unsigned_probe_is_rejected_with_401(simulator):
    response = post(simulator, "sim_a", "probe", probe_payload(), sign=False)

    assert response.status_code == 401
    assert response.json() == {"error": "signature missing"}


@pytest.mark.parametrize("offset", [-330, 330])  # the exact 300 s boundary is in test_signing.py
def test_stale_probe_is_rejected_with_401(simulator, offset):
    response = post(simulator, "sim_a", "probe", probe_payload(), timestamp=int(time.time()) + offset)

    assert response.status_code == 401
    assert response.json() == {"error": "signature stale"}


def test_probe_signed_with_another_secret_is_rejected_with_401(simulator):
    response = post(simulator, "sim_a", "probe", probe_payload(), secret="secret-of-someone-else")

    assert response.status_code == 401
    assert response.json() == {"error": "signature wrong"}


def test_unknown_partner_is_404(simulator):
    assert post(simulator, "nobody", "probe", probe_payload()).status_code == 404


def test_probe_with_clear_phone_is_refused(simulator):
    response = post(simulator, "sim_a", "probe", {**probe_payload(), "phone": PHONE})

    assert response.status_code == 400
    assert "hashes only" in response.json()["error"]


def test_probe_must_use_the_partners_hash_algorithm(run_simulator):
    PartnerFactory(code="LEGACY", api_secret="secret-legacy", phone_hash=Partner.PhoneHash.SHA256)
    simulator = run_simulator()

    keyed = post(simulator, "legacy", "probe", probe_payload(secret="secret-legacy"), secret="secret-legacy")
    plain = post(
        simulator, "legacy", "probe", probe_payload(secret="secret-legacy", alg="sha256"), secret="secret-legacy"
    )

    assert keyed.status_code == 400
    assert plain.status_code == 200


def test_rotated_secret_is_picked_up_without_a_restart(run_simulator, partner):
    """A wrong signature makes the simulator reload the secrets once before it answers 401."""
    current = {"sim_a": PartnerCredentials("SIM_A", "sim_a", SECRET, "hmac_sha256")}
    simulator = run_simulator(
        credentials=CredentialStore(refresh_seconds=3600, min_reload_seconds=0, loader=lambda: dict(current))
    )
    assert post(simulator, "sim_a", "probe", probe_payload()).status_code == 200

    current["sim_a"] = PartnerCredentials("SIM_A", "sim_a", "rotated-secret", "hmac_sha256")

    assert post(simulator, "sim_a", "probe", probe_payload(), secret="rotated-secret").status_code == 200
    assert post(simulator, "sim_a", "probe", probe_payload(), secret=SECRET).status_code == 401


def test_secrets_are_loaded_per_url_segment_from_the_database(partner):
    PartnerFactory(code="LEGACY", api_secret="secret-legacy", phone_hash=Partner.PhoneHash.MD5)
    # Same last segment on another host: the partner whose code matches the segment is served.
    PartnerFactory(code="ZZ_OTHER", api_secret="secret-other", api_base_url="https://partner.example/api/SIM_A/")
    PartnerFactory(code="NO_PATH", api_secret="secret-none", api_base_url="https://no-path.example")

    loaded = load_partner_credentials()

    assert set(loaded) == {"sim_a", "legacy"}
    assert loaded["sim_a"] == PartnerCredentials("SIM_A", "sim_a", SECRET, "hmac_sha256")
    assert loaded["legacy"] == PartnerCredentials("LEGACY", "legacy", "secret-legacy", "md5")


# --- applications --------------------------------------------------------------------------------
def test_same_idempotency_key_returns_the_first_answer_and_creates_one_application(simulator):
    referral_id = str(uuid.uuid4())
    payload = application_payload(referral_id)

    first = post(simulator, "sim_a", "applications", payload, headers={"Idempotency-Key": referral_id})
    again = post(simulator, "sim_a", "applications", payload, headers={"Idempotency-Key": referral_id})

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["decision"] in {"accepted", "rejected", "pending"}
    assert first.json()["application_id"]
    assert len(simulator.applications_for("SIM_A")) == 1


def test_a_new_idempotency_key_is_a_new_application(simulator):
    for _ in range(2):
        referral_id = str(uuid.uuid4())
        response = post(
            simulator,
            "sim_a",
            "applications",
            application_payload(referral_id),
            headers={"Idempotency-Key": referral_id},
        )
        assert response.status_code == 200

    answers = simulator.applications_for("SIM_A")
    assert len(answers) == 2
    assert answers[0].answer["application_id"] != answers[1].answer["application_id"]


@pytest.mark.parametrize(
    ("config", "decision"),
    [
        ({"application_accept_rate": 1.0}, "accepted"),
        ({"application_accept_rate": 0.0}, "rejected"),
        ({"application_pending_rate": 1.0}, "pending"),
    ],
)
def test_application_rates_decide(run_simulator, partner, config, decision):
    simulator = run_simulator(**config)
    referral_id = str(uuid.uuid4())

    response = post(
        simulator, "sim_a", "applications", application_payload(referral_id), headers={"Idempotency-Key": referral_id}
    )

    assert response.json()["decision"] == decision


def test_application_without_idempotency_key_is_refused(simulator):
    response = post(simulator, "sim_a", "applications", application_payload(str(uuid.uuid4())))

    assert response.status_code == 400
    assert simulator.applications_for("SIM_A") == []


def test_application_with_credit_data_is_refused_and_not_stored(simulator):
    referral_id = str(uuid.uuid4())

    response = post(
        simulator,
        "sim_a",
        "applications",
        application_payload(referral_id, credit_grade="B"),
        headers={"Idempotency-Key": referral_id},
    )

    assert response.status_code == 400
    assert "credit data" in response.json()["error"]
    assert simulator.applications_for("SIM_A") == []


def test_simulator_keeps_and_logs_no_personal_data(simulator, caplog):
    referral_id = str(uuid.uuid4())
    with caplog.at_level(logging.INFO, logger="partners.simulator"):
        post(
            simulator,
            "sim_a",
            "applications",
            application_payload(referral_id),
            headers={"Idempotency-Key": referral_id},
        )

        # The line is written just after the answer is sent: give the server thread a moment.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not any("/sim_a/applications" in r.getMessage() for r in caplog.records):
            time.sleep(0.01)

    (application,) = simulator.applications_for("SIM_A")
    assert PHONE not in repr(application)
    assert "张伟" not in repr(application)
    lines = [record.getMessage() for record in caplog.records if record.name == "partners.simulator"]
    request_lines = [line for line in lines if "/sim_a/applications" in line]
    assert len(request_lines) == 1
    assert "partner=SIM_A status=200" in request_lines[0]
    assert referral_id in request_lines[0]
    assert PHONE not in "\n".join(lines)
    assert "张伟" not in "\n".join(lines)


# --- notices ----------------------------------------------------------------------------------------
def test_withdrawal_notice_is_acknowledged_once_per_key(simulator):
    consent_id = str(uuid.uuid4())
    payload = {"consent_id": consent_id, "referral_id": str(uuid.uuid4()), "withdrawn_at": "2026-11-28T12:00:00+08:00"}
    key = {"Idempotency-Key": f"{consent_id}:SIM_A"}

    responses = [post(simulator, "sim_a", "withdrawals", payload, headers=key) for _ in range(2)]

    assert [r.json() for r in responses] == [{"acknowledged": True}, {"acknowledged": True}]
    assert simulator.state.counts()["withdrawals"] == 1


def test_reclaim_notice_is_acknowledged_once_per_key(simulator):
    reclaim_id = str(uuid.uuid4())
    payload = {
        "reclaim_id": reclaim_id,
        "referral_id": str(uuid.uuid4()),
        "loan_id": "L-1",
        "effective_date": "2026-12-01",
    }

    responses = [
        post(simulator, "sim_a", "reclaims", payload, headers={"Idempotency-Key": reclaim_id}) for _ in range(2)
    ]

    assert [r.status_code for r in responses] == [200, 200]
    assert simulator.state.counts()["reclaims"] == 1


# --- faults and transport -------------------------------------------------------------------------
def test_error_rate_answers_5xx_and_stores_nothing(run_simulator, partner):
    simulator = run_simulator(error_rate=1.0)
    referral_id = str(uuid.uuid4())

    response = post(
        simulator, "sim_a", "applications", application_payload(referral_id), headers={"Idempotency-Key": referral_id}
    )

    assert response.status_code in {500, 502, 503}
    assert simulator.applications_for("SIM_A") == []


def test_latency_option_delays_answers(run_simulator, partner):
    simulator = run_simulator(latency_ms=150)

    started = time.perf_counter()
    post(simulator, "sim_a", "probe", probe_payload())

    assert time.perf_counter() - started >= 0.15


def test_keep_alive_requests_are_not_slowed_by_nagle(simulator):
    """Without TCP_NODELAY each keep-alive answer waits ~40 ms for a delayed ACK (perf-notes.md)."""
    assert _Handler.disable_nagle_algorithm is True
    with requests.Session() as session:
        body = json.dumps(probe_payload()).encode()
        url = f"{simulator.url}/sim_a/probe"
        session.post(url, data=body, headers=signing.sign("secret-sim-a", body), timeout=5)  # warm up
        started = time.perf_counter()
        for _ in range(20):
            assert session.post(url, data=body, headers=signing.sign("secret-sim-a", body), timeout=5).ok
        elapsed = time.perf_counter() - started

    assert elapsed < 0.5  # 20 × 40 ms = 0.8 s with Nagle's algorithm on
