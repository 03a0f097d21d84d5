"""The chaos run's invariant checks (bench/chaos_checks.py) on a small world made the way production
makes it: applicants through the intake API, probes and applications sent by ``dispatch_send`` to
the real partner simulator's protocol logic (``PartnerSimulator.handle``, behind ``responses``), a
consent withdrawn between probe and application, and partner callbacks — duplicated, shuffled, plus
a stale and a badly signed copy — posted to the callbacks endpoint and applied as a worker would.

The simulator's own records plus the callbacks' deliveries make the ``records`` the checks read, as
``GET /_sim/records`` would give them. Each check says 0 on that world, and a non-zero figure when
one violation is planted.
"""

from __future__ import annotations

import datetime
import json
import random
import time
from decimal import Decimal
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import responses
from django.db import connection
from django.test import Client
from django.utils import timezone

from bench import chaos_checks
from bench.chaos_checks import Sim, World, check_all, replay
from partners import signing
from partners.models import Partner
from partners.simulator import CredentialStore, PartnerSimulator, SimulatorConfig
from partners.simulator_callbacks import STALE_SECONDS, CallbackDelivery, CallbackEvent, add_months, amortise, money
from referrals import triggers
from referrals.models import CallbackEvent as StoredEvent
from referrals.models import Consent, ConsentEvent, Dispatch, Loan, Referral
from referrals.services.callbacks import callback_apply
from referrals.services.consents import consent_withdraw
from referrals.services.dispatch import dispatch_send
from settlements import rules
from tests.factories import intake_payload, make_contract
from tests.referrals import builders

CST = datetime.timezone(datetime.timedelta(hours=8))
WORKED_EXAMPLE_FEES = {
    "application_fee": "30.00", "application_fee_tiers": [{"from_count": 3, "fee": "25.00"}],
    "approval_fee": "5.00", "disbursement_rate": "0.0100", "interest_share_rate": "0.2500", "vat_rate": "0.0600",
}  # fmt: skip
NAMES = ("lost", "duplicate applications", "unconsented sends", "bad callbacks accepted", "replay",
         "settlement difference", "ledger")  # fmt: skip


# --- the world ---------------------------------------------------------------------------------------
def relay(simulator: PartnerSimulator):
    """``responses`` callback: the request goes to the simulator's protocol logic, as over loopback."""

    def answer(request):
        body = request.body or b""
        got = simulator.handle(
            "POST", urlsplit(request.url).path, request.headers, body.encode() if isinstance(body, str) else body
        )
        return got.status, got.headers, json.dumps(got.body)

    return answer


def send_pending(kind: str | None = None) -> None:
    """Every due dispatch (of ``kind``), as the workers would, until none is left."""
    for _round in range(5):
        due = Dispatch.objects.filter(status=Dispatch.Status.PENDING, next_attempt_at__lte=timezone.now())
        ids = list((due.filter(kind=kind) if kind else due).order_by("pk").values_list("pk", flat=True))
        if not ids:
            return
        for pk in ids:
            assert dispatch_send(pk) in ("succeeded", "skipped")


class PartnerSide:
    """One partner's side of the callbacks: plans events and posts each copy, signed, to Spillway."""

    def __init__(self, partner: Partner, client: Client):
        self.partner, self.client, self.events = partner, client, []

    def event(self, referral: Referral, n: int, when: datetime.datetime, type_: str, **data) -> CallbackEvent:
        event = CallbackEvent(
            self.partner.code, self.partner.code.lower(), f"{referral.application_id}-{n:02d}", type_,
            str(referral.pk), when.astimezone(CST).isoformat(timespec="seconds"), data,
        )  # fmt: skip
        self.events.append(event)
        return event

    def deliver(self, event: CallbackEvent, delivery: CallbackDelivery) -> None:
        raw = event.body()
        secret = self.partner.api_secret + ("-not-the-secret" if delivery.tamper == "bad_signature" else "")
        stamp = int(time.time()) - (STALE_SECONDS if delivery.tamper == "stale" else 0)
        response = self.client.post(
            f"/api/v1/partners/{self.partner.code}/callbacks/", data=raw, content_type="application/json",
            headers=signing.sign(secret, raw, stamp),
        )  # fmt: skip
        delivery.sent_at, delivery.attempts, delivery.status = time.time(), 1, response.status_code
        delivery.state = "delivered" if response.status_code < 300 else "refused"
        if response.status_code == 200 and response.json()["status"] == "accepted":
            callback_apply(StoredEvent.objects.get(partner=self.partner, event_id=event.event_id).pk)


def loan_life(side: PartnerSide, referral: Referral, kind: str) -> None:
    """The partner's story of one accepted application, from its acceptance time."""
    t0 = referral.accepted_at
    hour = datetime.timedelta(hours=1)
    loan = f"LN-{referral.application_id[-6:]}"
    if kind == "returned":
        side.event(referral, 1, t0 + 10 * hour, "application.returned", reason="duplicate")
        return
    side.event(referral, 1, t0 + 2 * hour, "loan.approved", loan_id=loan, credit_limit="30000.00")
    if kind == "approved":
        return
    principal, apr, term = Decimal("30000.00") if kind == "repaid" else Decimal("10000.00"), Decimal("0.1800"), 3
    disbursed = t0 + 3 * hour
    first_due = add_months(disbursed.astimezone(CST).date(), 1)
    side.event(referral, 2, disbursed, "loan.disbursed", loan_id=loan, principal=money(principal), apr=f"{apr:.4f}",
               term_months=term, first_due_date=first_due.isoformat())  # fmt: skip
    if kind == "fpd":  # instalment 1 never paid: overdue 31 and 61 days, then defaulted
        at = datetime.datetime.combine(first_due, datetime.time(9), tzinfo=CST)
        for n, dpd in ((3, 31), (4, 61)):
            side.event(referral, n, at + datetime.timedelta(days=dpd), "loan.overdue", loan_id=loan, installment=1,
                       due_date=first_due.isoformat(), days_past_due=dpd)  # fmt: skip
        side.event(referral, 5, at + datetime.timedelta(days=91), "loan.defaulted", loan_id=loan)
        return
    paid_at = disbursed
    for number, (part, interest) in enumerate(amortise(principal, apr, term), start=1):
        due = add_months(disbursed.astimezone(CST).date(), number)
        paid_at = datetime.datetime.combine(due, datetime.time(10), tzinfo=CST)
        side.event(referral, 2 + number, paid_at, "repayment.posted", loan_id=loan, installment=number,
                   due_date=due.isoformat(), paid_date=due.isoformat(), principal=money(part), interest=money(interest))  # fmt: skip
    side.event(referral, 3 + term, paid_at + hour, "loan.closed", loan_id=loan)


@pytest.fixture
def world(db, api, origination, partnership_manager, compliance_officer):
    """Six applicants naming PARTNER_A (priority 20, the worked example's fees) and PARTNER_B:

    - 1–4 go to A (B's referrals end not selected): 1 repaid and closed, 2 returned as a duplicate
      10 hours after acceptance, 3 a first-payment default, 4 approved and never drawn;
    - 5 names B only: a loan repaid in full;
    - 6 withdraws consent after both probes, before the application: both referrals cancelled,
      A and B get a withdrawal notice."""
    partner_a, partner_b = builders.partners()
    make_contract(partner_a, drafter=partnership_manager, approver=compliance_officer, priority=20,
                  fees=WORKED_EXAMPLE_FEES)  # fmt: skip
    make_contract(partner_b, drafter=partnership_manager, approver=compliance_officer, priority=10)
    Partner.objects.update(max_requests_per_second=10000)
    text = builders.consent_text(actor=compliance_officer)
    simulator = PartnerSimulator(
        SimulatorConfig(seed=8, probe_accept_rate=1.0, application_accept_rate=1.0),
        credentials=CredentialStore(refresh_seconds=3600, min_reload_seconds=3600),
    )
    simulator.credentials.reload()
    started_at = timezone.now()
    origination_api = api(origination)
    applicants = {}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as http:
        for code in ("partner_a", "partner_b"):
            for action in ("probe", "applications", "withdrawals"):
                http.add_callback(responses.POST, f"http://127.0.0.1:9100/{code}/{action}", callback=relay(simulator))
        for seq in range(1, 7):
            named = ["PARTNER_B"] if seq == 5 else ["PARTNER_A", "PARTNER_B"]
            response = origination_api.post(
                "/api/v1/applicants/", intake_payload(text=text, partners=named, seq=seq), format="json"
            )
            assert response.status_code == 201, response.content
            applicants[seq] = response.json()["id"]
        send_pending(Dispatch.Kind.PROBE)
        withdrawn = Consent.objects.get(applicant_id=applicants[6])
        consent_withdraw(actor=origination, consent=withdrawn, channel="app", reason="不再需要")
        withdrawals = {str(withdrawn.pk): time.time()}
        send_pending()

    referrals = {}
    for seq, applicant in applicants.items():
        for referral in Referral.objects.filter(applicant_id=applicant).select_related("partner"):
            referrals[f"{referral.partner.code[-1]}{seq}"] = referral
    statuses = {name: r.status for name, r in referrals.items()}
    assert statuses == {
        "A1": "submitted", "A2": "submitted", "A3": "submitted", "A4": "submitted", "A6": "cancelled",
        "B1": "not_selected", "B2": "not_selected", "B3": "not_selected", "B4": "not_selected", "B5": "submitted",
        "B6": "cancelled",
    }, statuses  # fmt: skip

    client = Client()
    sides = {partner_a.code: PartnerSide(partner_a, client), partner_b.code: PartnerSide(partner_b, client)}
    for name, kind in (("A1", "repaid"), ("A2", "returned"), ("A3", "fpd"), ("A4", "approved"), ("B5", "repaid")):
        loan_life(sides[referrals[name].partner.code], referrals[name], kind)
    copies = []
    for side in sides.values():
        for n, event in enumerate(side.events):
            tampers = [None, None] if n % 3 == 0 else [None]  # some events twice
            if event.type == "loan.approved" and event.referral_id == str(referrals["A1"].pk):
                tampers.append("stale")
            if event.type == "loan.disbursed" and event.referral_id == str(referrals["A3"].pk):
                tampers.insert(0, "bad_signature")
            for copy, tamper in enumerate(tampers, start=1):
                delivery = CallbackDelivery(copy, tamper, time.time())
                event.deliveries.append(delivery)
                copies.append((side, event, delivery))
    random.Random(5).shuffle(copies)  # out of order, duplicates apart
    for side, event, delivery in copies:
        side.deliver(event, delivery)
    assert {d.status for _s, _e, d in copies if d.tamper} == {401}
    assert not StoredEvent.objects.filter(status=StoredEvent.Status.RECEIVED).exists()

    records = simulator.records()
    for code, side in sides.items():
        records["partners"].setdefault(code, {"requests": [], "applications": {}, "withdrawals": [], "callbacks": []})
        records["partners"][code]["callbacks"] = [event.as_record() for event in side.events]
    records = json.loads(json.dumps(records))  # what the harness gets from GET /_sim/records
    return SimpleNamespace(
        records=records, withdrawals=withdrawals, started_at=started_at, referrals=referrals, withdrawn=withdrawn
    )


def figures(findings) -> dict:
    assert [f.name for f in findings] == list(NAMES)
    return {f.name: f.count for f in findings}


CLEAN = dict.fromkeys(NAMES, 0) | {"settlement difference": "0.00"}


# --- the clean world -------------------------------------------------------------------------------------
def test_every_check_holds_on_a_world_that_kept_every_promise(world):
    findings = check_all(world.records, world.withdrawals, started_at=world.started_at)
    assert figures(findings) == CLEAN, [(f.name, f.examples) for f in findings if not f.ok]
    assert all(f.ok and not f.examples for f in findings)
    notes = {f.name: f.note for f in findings}
    # Not vacuous: the world had loans, events and statement lines to compare.
    assert notes["replay"] == "5 referrals replayed from 19 events, 4 loans compared"
    assert Loan.objects.count() == 4
    assert "0 engine lines" not in notes["settlement difference"], notes
    assert notes["unconsented sends"].startswith("16 probes and applications received")  # 11 probes, 5 applications


def test_the_checks_read_in_bulk_whatever_the_number_of_referrals(world, django_assert_max_num_queries):
    # Eleven referrals, four loans, thirty-odd events: a query per referral, loan or event would
    # exceed this budget. (The settlement engine's own queries are per partner and month.)
    with django_assert_max_num_queries(16):
        sim, loaded = Sim(world.records), World.load(world.started_at)
        for check in (chaos_checks.check_lost, chaos_checks.check_duplicates, chaos_checks.check_bad_callbacks):
            assert check(loaded, sim).ok
        assert chaos_checks.check_unconsented(loaded, sim, world.withdrawals).ok
        finding, replayed = chaos_checks.check_replay(loaded, sim)
        assert finding.ok
        assert chaos_checks.recompute(loaded, sim, replayed)
        assert chaos_checks._db_periods(loaded, replayed)


# --- one violation each ------------------------------------------------------------------------------------
def only(findings, name: str):
    """The figures, with ``name`` the only one that is not clean; returns that finding."""
    got = figures(findings)
    assert {k: v for k, v in got.items() if k != name} == {k: v for k, v in CLEAN.items() if k != name}, got
    finding = next(f for f in findings if f.name == name)
    assert not finding.ok
    assert finding.examples
    return finding


def test_a_second_application_id_for_a_referral_is_a_duplicate(world):
    a1 = str(world.referrals["A1"].pk)
    apps = world.records["partners"]["PARTNER_A"]["applications"][a1]
    apps.append({**apps[0], "application_id": "SIM-SECOND-ONE", "idempotency_key": f"{a1}-again"})
    finding = only(check_all(world.records, world.withdrawals, started_at=world.started_at), "duplicate applications")
    assert finding.count == 1
    assert a1 in finding.examples[0]


def test_a_probe_received_after_the_withdrawal_returned_is_an_unconsented_send(world):
    a6 = world.referrals["A6"]
    returned = world.withdrawals[str(world.withdrawn.pk)]
    world.records["partners"]["PARTNER_A"]["requests"].append(
        {"partner": "PARTNER_A", "kind": "probe", "received_at": returned + 0.5, "idempotency_key": None,
         "referral_id": str(a6.pk), "consent_id": None, "fields": [], "status": 200, "outcome": "answered",
         "answer": {"decision": "accept"}, "answered_at": returned + 0.6}
    )  # fmt: skip
    finding = only(check_all(world.records, world.withdrawals, started_at=world.started_at), "unconsented sends")
    assert finding.count == 1  # after the withdrawal, and more than the ledger recorded: one request
    assert "after the withdrawal" in finding.examples[0]
    assert str(a6.pk) in finding.examples[0]


def test_a_stale_copy_answered_202_is_a_bad_callback_accepted(world):
    stale = [
        d
        for e in world.records["partners"]["PARTNER_A"]["callbacks"]
        for d in e["deliveries"]
        if d["tamper"] == "stale"
    ]
    assert [d["status"] for d in stale] == [401]
    stale[0]["status"] = 202
    finding = only(check_all(world.records, world.withdrawals, started_at=world.started_at), "bad callbacks accepted")
    assert finding.count == 1
    assert finding.examples[0].startswith("stale copy")


def test_a_referral_left_probing_is_lost(world):
    Referral.objects.filter(pk=world.referrals["B1"].pk).update(status=Referral.Status.PROBING)
    finding = only(check_all(world.records, world.withdrawals, started_at=world.started_at), "lost")
    assert finding.count == 1
    assert "probing" in finding.examples[0]


def test_a_referral_whose_retry_is_scheduled_is_waiting_not_lost(world):
    b1 = world.referrals["B1"]
    Referral.objects.filter(pk=b1.pk).update(status=Referral.Status.PROBING)
    Dispatch.objects.filter(referral=b1, kind=Dispatch.Kind.PROBE).update(
        status=Dispatch.Status.PENDING, next_attempt_at=timezone.now() + datetime.timedelta(hours=1)
    )
    findings = check_all(world.records, world.withdrawals, started_at=world.started_at)
    assert figures(findings) == CLEAN
    assert "1 open referrals, 1 dispatches" in findings[0].note


def test_a_loan_status_that_differs_from_the_replay_is_found(world):
    Loan.objects.filter(referral=world.referrals["A4"]).update(status=Loan.Status.CLOSED)
    finding = only(check_all(world.records, world.withdrawals, started_at=world.started_at), "replay")
    assert finding.count == 1
    assert "status: database closed, replay approved" in finding.examples[0]


def test_a_settlement_line_the_engine_misses_is_a_difference(world, monkeypatch):
    real = rules.ApplicationFee.lines
    dropped = []

    def one_short(self, ctx):
        for line in real(self, ctx):
            if not dropped:
                dropped.append(line)  # the first application fee computed is never written
                continue
            yield line

    monkeypatch.setattr(rules.ApplicationFee, "lines", one_short)
    finding = only(check_all(world.records, world.withdrawals, started_at=world.started_at), "settlement difference")
    assert [line.amount for line in dropped] == [Decimal("30.00")]
    assert finding.count == "31.80"  # 30.00 and its 6 % VAT
    assert any("recomputation only" in e and "application_fee 30.00" in e for e in finding.examples)


def test_a_tampered_ledger_event_is_a_ledger_problem(world):
    event = ConsentEvent.objects.filter(consent=world.withdrawn, type=ConsentEvent.Type.PROBE_SENT).first()
    triggers.drop(connection)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE referrals_consentevent SET payload = %s WHERE id = %s", [json.dumps({"partner": "X"}), event.pk]
            )
    finally:
        triggers.install(connection)
    findings = check_all(world.records, world.withdrawals, started_at=world.started_at)
    ledger = next(f for f in findings if f.name == "ledger")
    assert not ledger.ok
    assert ledger.count >= 1
    assert "altered" in ledger.examples[0]


# --- the replay, on its own ------------------------------------------------------------------------------
def event(n: int, type_: str, hours: float, **data) -> dict:
    at = datetime.datetime(2026, 11, 28, 12, tzinfo=CST) + datetime.timedelta(hours=hours)
    return {"event_id": f"E-{n}", "type": type_, "occurred_at": at.isoformat(), "data": data}


STORY = [
    event(1, "application.accepted", 1, application_id="APP-1", reason=""),
    event(2, "loan.approved", 2, loan_id="L1", credit_limit="20000.00"),
    event(3, "loan.approved", 3, loan_id="L1", credit_limit="25000.00"),  # resent later: the first counts
    event(4, "loan.disbursed", 4, loan_id="L1", principal="20000.00", apr="0.1800", term_months=2, first_due_date="2026-12-28"),
    event(5, "repayment.posted", 700, loan_id="L1", installment=1, due_date="2026-12-28", paid_date="2026-12-28", principal="9925.37", interest="300.00"),
    event(6, "repayment.posted", 1400, loan_id="L1", installment=2, due_date="2027-01-28", paid_date="2027-01-28", principal="10074.63", interest="151.12"),
    event(7, "loan.closed", 1401, loan_id="L1"),
]  # fmt: skip


def test_the_replay_folds_a_pending_application_into_a_repaid_closed_loan():
    state = replay(STORY, decision="pending", application_id="APP-1")
    assert (state.status, state.application_id) == (Referral.Status.SUBMITTED, "APP-1")
    assert state.accepted_at == datetime.datetime(2026, 11, 28, 13, tzinfo=CST)
    loan = state.loans["L1"]
    assert (loan.status, loan.credit_limit, loan.principal, loan.term_months) == (
        Loan.Status.CLOSED, Decimal("20000.00"), Decimal("20000.00"), 2,
    )  # fmt: skip
    assert sum(p for p, _i, _d in loan.repayments.values()) == Decimal("20000.00")
    assert loan.ended_at == datetime.datetime(2026, 11, 28, 12, tzinfo=CST) + datetime.timedelta(hours=1401)


def test_the_replay_is_the_same_whatever_order_the_events_came_in():
    in_order = replay(STORY, decision="pending", application_id="APP-1")
    for seed in range(5):
        shuffled = STORY[:]
        random.Random(seed).shuffle(shuffled)
        assert replay(shuffled, decision="pending", application_id="APP-1") == in_order


def test_the_replay_returns_only_an_accepted_application_and_decides_only_a_pending_one():
    returned = event(9, "application.returned", 30, reason="duplicate")
    assert replay([returned], decision="accepted").status == Referral.Status.RETURNED
    assert replay([returned], decision="rejected").status == Referral.Status.REJECTED
    assert replay([STORY[0], returned], decision="pending").status == Referral.Status.RETURNED
    rejected = event(8, "application.rejected", 1, application_id="APP-1", reason="risk_model")
    assert replay([rejected, STORY[0]], decision="pending").status == Referral.Status.REJECTED
    assert replay([rejected], decision="accepted").status == Referral.Status.SUBMITTED


def test_a_referral_submitted_in_the_database_that_the_partner_never_received_differs_from_the_replay(world):
    b5 = str(world.referrals["B5"].pk)
    del world.records["partners"]["PARTNER_B"]["applications"][b5]
    findings = {f.name: f for f in check_all(world.records, world.withdrawals, started_at=world.started_at)}
    assert findings["replay"].count == 1
    assert findings["replay"].examples[0] == (
        f"referral {b5} (PARTNER_B): status: database submitted, but the partner holds no application"
    )
    # Nor does the recomputation charge an application fee the partner never accepted.
    assert findings["settlement difference"].count == "31.80"
