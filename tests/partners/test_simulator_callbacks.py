"""The partner simulator as a realistic partner: faults, records, and signed callbacks to Spillway.

The simulator runs in a thread on an ephemeral port; its callbacks go to a tiny stdlib server in
the test that checks signatures the way Spillway's callback view does (401 when they fail) and
records what arrived. Loan months last a fraction of a second, so a whole loan lives in about one.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from django.core.management import CommandError, call_command

from partners import signing
from partners.simulator import CredentialStore, DowntimeWindow, PartnerSimulator, SimulatorConfig
from partners.simulator_callbacks import CallbackConfig, add_months, amortise
from referrals.services.callbacks import CallbackSerializer
from tests.factories import PartnerFactory

pytestmark = pytest.mark.django_db

PHONE = "13812345678"
SECRET = "secret-sim-b"
CALLBACK_PATH = "/api/v1/partners/SIM_B/callbacks/"
# A life with no surprises: accepted → approved → disbursed → every instalment paid → closed.
CLEAN_LIFE = {
    "returned_rate": 0.0,
    "approval_rate": 1.0,
    "disbursement_rate": 1.0,
    "late_rate": 0.0,
    "fpd_rate": 0.0,
    "default_rate": 0.0,
    "month_seconds": 0.15,
    "retry_backoff_seconds": 0.01,
}


class Receiver:
    """Stands in for Spillway's callback endpoint: verifies, records, answers."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.lock = threading.Lock()
        self.script: list[int] = []  # statuses to answer next (after a valid signature), then 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    signing.verify(SECRET, self.headers, body)
                    verdict = "ok"
                except signing.SignatureError as exc:
                    verdict = exc.reason
                with receiver.lock:
                    status = 401 if verdict != "ok" else (receiver.script.pop(0) if receiver.script else 200)
                    receiver.received.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body, "verdict": verdict}
                    )
                data = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def events(self, verdict: str = "ok") -> list[dict]:
        with self.lock:
            return [json.loads(item["body"]) for item in self.received if item["verdict"] == verdict]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def partner():
    return PartnerFactory(code="SIM_B", api_secret=SECRET, api_base_url="http://127.0.0.1:9100/sim_b")


@pytest.fixture
def run_simulator(partner, receiver):
    started: list[PartnerSimulator] = []

    def run(*, callbacks: dict | None = None, **config) -> PartnerSimulator:
        callback_config = None
        if callbacks is not None:
            callback_config = CallbackConfig(spillway_url=receiver.url, **{**CLEAN_LIFE, **callbacks})
        simulator = PartnerSimulator(
            SimulatorConfig(**{"seed": 11, "application_accept_rate": 1.0, **config}, callbacks=callback_config),
            port=0,
            credentials=CredentialStore(refresh_seconds=3600, min_reload_seconds=3600),
        )
        simulator.credentials.reload()  # from the database, in this thread
        simulator.start()
        started.append(simulator)
        return simulator

    yield run
    for simulator in started:
        simulator.stop()


def post(simulator, action, payload, *, key=None, timeout=5, segment="sim_b", secret=SECRET):
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **signing.sign(secret, body)}
    if key:
        headers["Idempotency-Key"] = key
    return requests.post(f"{simulator.url}/{segment}/{action}", data=body, headers=headers, timeout=timeout)


def apply(simulator, referral_id=None, *, term=3, timeout=5):
    referral_id = referral_id or str(uuid.uuid4())
    payload = {
        "referral_id": referral_id,
        "applicant": {
            "name": "张伟",
            "phone": PHONE,
            "requested_amount": "12000.00",
            "requested_term_months": term,
        },
        "consent": {"id": str(uuid.uuid4()), "text_code": "referral-consent-v3", "granted_at": "", "expires_at": ""},
    }
    return referral_id, post(simulator, "applications", payload, key=referral_id, timeout=timeout)


def finish(simulator, timeout=8.0) -> None:
    assert simulator.callbacks.wait_idle(timeout), "callbacks still pending"


def assert_spillway_would_accept(events: list[dict]) -> None:
    """Every body passes the validation of Spillway's callback endpoint (referrals' serializer)."""
    for event in events:
        serializer = CallbackSerializer(data=event)
        assert serializer.is_valid(), (event["type"], serializer.errors)


# --- the life of a loan ------------------------------------------------------------------------------
def test_a_full_compressed_life_arrives_signed_and_in_occurred_order(run_simulator, receiver):
    simulator = run_simulator(callbacks={})
    referral_id, response = apply(simulator)
    assert response.json()["decision"] == "accepted"

    finish(simulator)

    assert {item["path"] for item in receiver.received} == {CALLBACK_PATH}
    assert all(item["verdict"] == "ok" for item in receiver.received)
    events = receiver.events()
    assert [event["type"] for event in events] == [
        "loan.approved",
        "loan.disbursed",
        "repayment.posted",
        "repayment.posted",
        "repayment.posted",
        "loan.closed",
    ]
    occurred = [dt.datetime.fromisoformat(event["occurred_at"]) for event in events]
    assert occurred == sorted(occurred)
    assert len(set(occurred)) == len(occurred)
    assert all(event["occurred_at"].endswith("+08:00") for event in events)
    assert abs((occurred[0] - dt.datetime.now(dt.UTC)).days) <= 3  # the clock starts at "now"
    assert len({event["event_id"] for event in events}) == len(events)
    assert {event["referral_id"] for event in events} == {referral_id}

    approved, disbursed, *repayments, closed = (event["data"] for event in events)
    loan_id = approved["loan_id"]
    assert {data["loan_id"] for data in (disbursed, *repayments, closed)} == {loan_id}
    principal = Decimal(disbursed["principal"])
    assert Decimal("1000") <= principal <= Decimal(approved["credit_limit"])
    assert disbursed["term_months"] == 3
    assert Decimal("0.0720") <= Decimal(disbursed["apr"]) <= Decimal("0.2400")
    first_due = dt.date.fromisoformat(disbursed["first_due_date"])
    assert [data["installment"] for data in repayments] == [1, 2, 3]
    assert [data["due_date"] for data in repayments] == [add_months(first_due, n).isoformat() for n in range(3)]
    for data in repayments:
        assert data["principal"] == f"{Decimal(data['principal']):.2f}"
        assert dt.date.fromisoformat(data["paid_date"]) <= dt.date.fromisoformat(data["due_date"])
    assert sum(Decimal(data["principal"]) for data in repayments) == principal
    assert Decimal(repayments[0]["interest"]) > Decimal(repayments[2]["interest"]) > 0  # amortising

    assert_spillway_would_accept(events)
    sent = simulator.callbacks.events("SIM_B")
    assert [event.event_id for event in sent] == [event["event_id"] for event in events]
    assert all(d.state == "delivered" and d.status == 200 for event in sent for d in event.deliveries)


def test_equal_instalments_add_up_to_the_principal():
    rows = amortise(Decimal("12000.00"), Decimal("0.2400"), 12)

    assert sum(principal for principal, _ in rows) == Decimal("12000.00")
    assert rows[0] == (Decimal("894.72"), Decimal("240.00"))  # payment 1134.72 at 2 % a month
    assert {principal + interest for principal, interest in rows[:-1]} == {Decimal("1134.72")}


def test_pending_application_is_decided_by_a_callback_before_the_loan(run_simulator, receiver):
    simulator = run_simulator(application_pending_rate=1.0, callbacks={})
    _referral_id, response = apply(simulator)
    assert response.json()["decision"] == "pending"

    finish(simulator)

    events = receiver.events()
    assert events[0]["type"] == "application.accepted"
    assert events[0]["data"]["application_id"] == response.json()["application_id"]
    assert [event["type"] for event in events[1:3]] == ["loan.approved", "loan.disbursed"]
    assert_spillway_would_accept(events)


def test_rejected_after_review_and_synchronous_rejections_send_no_loan(run_simulator, receiver):
    simulator = run_simulator(application_pending_rate=1.0, application_accept_rate=0.0, callbacks={})
    apply(simulator)

    finish(simulator)

    assert [event["type"] for event in receiver.events()] == ["application.rejected"]


def test_first_payment_default_goes_overdue_past_30_days_then_defaults(run_simulator, receiver):
    simulator = run_simulator(callbacks={"fpd_rate": 1.0})
    apply(simulator)

    finish(simulator)

    events = receiver.events()
    assert [event["type"] for event in events] == [
        "loan.approved",
        "loan.disbursed",
        "loan.overdue",
        "loan.overdue",
        "loan.defaulted",
    ]
    overdue = events[2]["data"]
    assert overdue["installment"] == 1
    assert overdue["days_past_due"] >= 31
    assert overdue["due_date"] == events[1]["data"]["first_due_date"]
    assert_spillway_would_accept(events)


def test_a_late_instalment_is_reported_overdue_then_paid_late(run_simulator, receiver):
    simulator = run_simulator(callbacks={"late_rate": 1.0})
    apply(simulator, term=3)

    finish(simulator)

    events = receiver.events()
    types = [event["type"] for event in events]
    assert types[2:] == ["loan.overdue", "repayment.posted"] * 3 + ["loan.closed"]
    for overdue, paid in zip(events[2:8:2], events[3:8:2], strict=True):
        assert overdue["data"]["installment"] == paid["data"]["installment"]
        assert overdue["data"]["days_past_due"] == 1
        assert paid["data"]["paid_date"] > paid["data"]["due_date"]
    assert_spillway_would_accept(events)


def test_returned_applications_send_only_the_return(run_simulator, receiver):
    simulator = run_simulator(callbacks={"returned_rate": 1.0})
    apply(simulator)

    finish(simulator)

    assert [(e["type"], e["data"]) for e in receiver.events()] == [("application.returned", {"reason": "duplicate"})]


# --- delivery chaos ----------------------------------------------------------------------------------
def test_duplicates_deliver_every_event_one_to_three_times(run_simulator, receiver):
    simulator = run_simulator(callbacks={"duplicates": 3})
    for _ in range(3):
        apply(simulator)

    finish(simulator)

    copies = Counter(event["event_id"] for event in receiver.events())
    planned = {event.event_id for event in simulator.callbacks.events()}
    assert set(copies) == planned
    assert set(copies.values()) <= {1, 2, 3}
    assert max(copies.values()) > 1
    assert copies == Counter({e.event_id: len(e.deliveries) for e in simulator.callbacks.events()})


def test_reorder_shuffles_arrival_but_each_event_still_arrives(run_simulator, receiver):
    simulator = run_simulator(callbacks={"reorder_seconds": 0.5, "month_seconds": 0.2})
    # A fixed referral id: with the seed, it fixes the plan and every delivery's jitter.
    apply(simulator, "3d4c5b6a-1111-4222-8333-944455566677", term=3)

    finish(simulator)

    events = receiver.events()
    assert len(events) == len(simulator.callbacks.events()) == 6  # approved, disbursed, 3 repayments, closed
    occurred = [dt.datetime.fromisoformat(event["occurred_at"]) for event in events]
    assert occurred != sorted(occurred)
    assert sorted(e["event_id"] for e in events) == sorted(e.event_id for e in simulator.callbacks.events())


def test_stale_and_badly_signed_copies_fail_verification_and_are_not_retried(run_simulator, receiver):
    simulator = run_simulator(callbacks={"stale_rate": 1.0, "bad_signature_rate": 1.0})
    apply(simulator)

    finish(simulator)

    verdicts = Counter(item["verdict"] for item in receiver.received)
    planned = simulator.callbacks.events()
    assert verdicts == {"ok": len(planned), "stale": len(planned), "wrong": len(planned)}
    stale = next(item for item in receiver.received if item["verdict"] == "stale")
    assert int(stale["headers"][signing.TIMESTAMP_HEADER]) <= time.time() - 590
    for event in planned:
        tampered = [d for d in event.deliveries if d.tamper]
        assert {d.tamper for d in tampered} == {"stale", "bad_signature"}
        assert all(d.status == 401 and d.state == "refused" and d.attempts == 1 for d in tampered)


def test_a_5xx_is_retried_and_a_4xx_is_not(run_simulator, receiver):
    simulator = run_simulator(callbacks={"returned_rate": 1.0})
    receiver.script = [503, 500]
    apply(simulator)
    finish(simulator)
    receiver.script = [404]
    apply(simulator)
    finish(simulator)

    first, second = (event.deliveries[0] for event in simulator.callbacks.events())
    assert (first.attempts, first.status, first.state) == (3, 200, "delivered")
    assert (second.attempts, second.status, second.state) == (1, 404, "refused")
    assert len(receiver.received) == 4


def test_callbacks_of_a_partner_are_held_back_while_it_is_down(run_simulator, receiver):
    simulator = run_simulator(downtime=(DowntimeWindow("SIM_B", 0.3, 0.6),), callbacks={})
    apply(simulator)

    finish(simulator)

    sent = [d.sent_at - simulator.started_at for e in simulator.callbacks.events() for d in e.deliveries]
    assert not any(0.3 <= at < 0.9 for at in sent)


def test_a_withdrawal_stops_a_life_that_was_not_funded_yet(run_simulator, receiver):
    simulator = run_simulator(callbacks={"month_seconds": 30})
    referral_id, _ = apply(simulator)

    consent_id = str(uuid.uuid4())
    notice = {"consent_id": consent_id, "referral_id": referral_id, "withdrawn_at": "2026-11-28T12:00:00+08:00"}
    assert post(simulator, "withdrawals", notice, key=f"{consent_id}:SIM_B").status_code == 200

    assert simulator.callbacks.pending() == 0
    states = {d.state for e in simulator.callbacks.events() for d in e.deliveries}
    assert states == {"cancelled"}


# --- faults on the partner's side --------------------------------------------------------------------
def test_a_timeout_after_accept_keeps_one_application_per_idempotency_key(run_simulator):
    simulator = run_simulator(timeout_rate=1.0, timeout_after_accept_rate=1.0, timeout_hold_ms=400, callbacks={})

    referral_id = str(uuid.uuid4())
    with pytest.raises(requests.Timeout):
        apply(simulator, referral_id, timeout=0.15)
    _, retry = apply(simulator, referral_id, timeout=3)

    (application,) = simulator.applications_for("SIM_B")
    assert retry.status_code == 200
    assert retry.json() == application.answer
    records = simulator.requests_received("SIM_B", kind="application")
    assert [r.outcome for r in records] == ["timeout_after_accept", "timeout_after_accept"]
    assert [r.idempotency_key for r in records] == [referral_id, referral_id]
    assert [r.answer for r in records] == [application.answer, application.answer]
    # One application, one life: the retry planned no second set of callbacks.
    assert len({event.referral_id for event in simulator.callbacks.events()}) == 1
    assert len(simulator.callbacks.events()) == 6


def test_a_timeout_before_processing_stores_nothing(run_simulator):
    simulator = run_simulator(timeout_rate=1.0, timeout_after_accept_rate=0.0, timeout_hold_ms=300)

    with pytest.raises(requests.Timeout):
        apply(simulator, timeout=0.1)

    assert simulator.applications_for("SIM_B") == []
    deadline = time.monotonic() + 2
    while simulator.requests_received()[0].status is None and time.monotonic() < deadline:
        time.sleep(0.02)
    (record,) = simulator.requests_received()
    assert (record.status, record.outcome) == (504, "timeout")


def test_downtime_answers_503_within_the_window_and_200_after(run_simulator):
    PartnerFactory(code="SIM_C", api_secret="secret-sim-c", api_base_url="http://127.0.0.1:9100/sim_c")
    simulator = run_simulator(downtime=(DowntimeWindow("SIM_B", 0, 0.5),))
    probe = {"referral_id": str(uuid.uuid4()), "phone_hash": signing.phone_hash(PHONE, "hmac_sha256", SECRET)}
    probe |= {"hash_alg": "hmac_sha256", "province": "310000"}

    down = post(simulator, "probe", probe)
    other = post(simulator, "probe", probe | {"phone_hash": "0" * 64}, segment="sim_c", secret="secret-sim-c")
    time.sleep(max(0.0, simulator.started_at + 0.55 - time.time()))
    up = post(simulator, "probe", probe)

    assert down.status_code == 503
    assert int(down.headers["Retry-After"]) >= 1
    assert other.status_code == 200
    assert up.status_code == 200
    assert [r.outcome for r in simulator.requests_received("SIM_B")] == ["down", "answered"]


def test_downtime_can_drop_connections_instead(run_simulator):
    simulator = run_simulator(downtime=(DowntimeWindow("SIM_B", 0, 30),), down_mode="drop")

    with pytest.raises(requests.ConnectionError):
        apply(simulator)


@pytest.mark.parametrize(
    ("config", "statuses"),
    [({"error_rate": 1.0}, {500, 502, 503}), ({"throttle_rate": 1.0}, {429})],
)
def test_error_and_throttle_rates_store_nothing(run_simulator, config, statuses):
    simulator = run_simulator(**config)

    answers = [apply(simulator)[1] for _ in range(4)]

    assert {answer.status_code for answer in answers} <= statuses
    assert simulator.applications_for("SIM_B") == []


def test_faults_are_drawn_per_key_and_attempt_so_a_seed_reproduces_them(run_simulator):
    referral_ids = [str(uuid.uuid4()) for _ in range(15)]
    config = {"seed": 5, "error_rate": 0.3, "throttle_rate": 0.3}
    runs = []
    for order in (referral_ids, referral_ids[::-1]):
        simulator = run_simulator(**config)
        runs.append({rid: [apply(simulator, rid)[1].status_code for _ in range(2)] for rid in order})

    assert runs[0] == runs[1]
    assert {status for statuses in runs[0].values() for status in statuses} >= {200, 429}


# --- records ------------------------------------------------------------------------------------------
def test_records_endpoint_lists_requests_without_personal_data(run_simulator):
    simulator = run_simulator()
    referral_id, answer = apply(simulator)
    consent_id = str(uuid.uuid4())
    notice = {"consent_id": consent_id, "referral_id": referral_id, "withdrawn_at": "2026-11-28T12:00:00+08:00"}
    post(simulator, "withdrawals", notice, key=f"{consent_id}:SIM_B")

    response = requests.get(f"{simulator.url}/_sim/records", timeout=5)

    assert response.status_code == 200
    assert PHONE not in response.text
    assert "张伟" not in response.text
    assert "12000" not in response.text
    records = response.json()["partners"]["SIM_B"]
    application, withdrawal = records["requests"]
    assert application["kind"] == "application"
    assert application["referral_id"] == application["idempotency_key"] == referral_id
    assert application["fields"] == ["name", "phone", "requested_amount", "requested_term_months"]
    assert application["status"] == 200
    assert application["answer"] == answer.json()
    assert abs(application["received_at"] - time.time()) < 10
    assert (withdrawal["kind"], withdrawal["consent_id"]) == ("withdrawal", consent_id)
    assert list(records["applications"]) == [referral_id]
    assert len(records["applications"][referral_id]) == 1
    assert [(w["consent_id"], w["referral_id"]) for w in records["withdrawals"]] == [(consent_id, referral_id)]
    assert requests.get(f"{simulator.url}/_sim/records?partner=nobody", timeout=5).json()["partners"] == {}


# --- options --------------------------------------------------------------------------------------------
def test_downtime_windows_parse_from_the_command_line_form():
    assert DowntimeWindow.parse("YUNFAN_CF:60:300") == DowntimeWindow("YUNFAN_CF", 60.0, 300.0)
    for bad in ("YUNFAN_CF:60", "YUNFAN_CF:a:300", ":1:2", "YUNFAN_CF:1:0"):
        with pytest.raises(ValueError, match="PARTNER_CODE"):
            DowntimeWindow.parse(bad)


def test_command_refuses_impossible_fault_rates():
    with pytest.raises(CommandError, match="must not exceed 1"):
        call_command("simulate_partners", "--port", "0", "--error-rate", "0.6", "--timeout-rate", "0.6")
