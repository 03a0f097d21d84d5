"""Partner callbacks (partner-protocol.md §3) through the real view, and applying them in any order.

The referral under test is made the way production makes it: intake API → probes answered →
the application answered ``pending`` (partners stubbed at the HTTP boundary with ``responses``).
Applying happens through ``callback_apply_task`` (called directly, as a worker would run it).
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from decimal import Decimal

import pytest
import responses
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partners import signing
from referrals.models import CallbackEvent, Dispatch, Loan, LoanOverdue, Referral, Repayment
from referrals.services.callbacks import callback_apply, callback_receive
from referrals.services.dispatch import dispatch_send
from referrals.tasks import callback_apply_task
from tests.factories import make_contract

A = "http://127.0.0.1:9100/partner_a"
B = "http://127.0.0.1:9100/partner_b"
CST = datetime.timezone(datetime.timedelta(hours=8))
T0 = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=CST)


# --- set-up -----------------------------------------------------------------------------------
@pytest.fixture
def contracts(partners, partnership_manager, compliance_officer):
    return [
        make_contract(partners[0], drafter=partnership_manager, approver=compliance_officer, priority=20),
        make_contract(partners[1], drafter=partnership_manager, approver=compliance_officer, priority=10),
    ]


@pytest.fixture
def referral(origination_api, payload, contracts) -> Referral:
    """PARTNER_A's referral with the application sent and answered ``pending`` (decision by callback)."""
    response = origination_api.post("/api/v1/applicants/", payload(), format="json")
    assert response.status_code == 201, response.content
    with responses.RequestsMock() as partner_http:
        partner_http.add(responses.POST, f"{A}/probe", json={"decision": "accept", "reason": ""})
        partner_http.add(responses.POST, f"{B}/probe", json={"decision": "decline", "reason": "known customer"})
        partner_http.add(
            responses.POST,
            f"{A}/applications",
            json={"application_id": "A-APP-1", "decision": "pending", "reason": "manual_review"},
        )
        for code in ("PARTNER_A", "PARTNER_B"):
            assert dispatch_send(Dispatch.objects.get(kind="probe", partner__code=code).pk) == "succeeded"
        assert dispatch_send(Dispatch.objects.get(kind="application").pk) == "succeeded"
    referral = Referral.objects.get(partner__code="PARTNER_A")
    assert (referral.status, referral.application_id) == ("submitting", "A-APP-1")
    return referral


@pytest.fixture
def other_referral(referral) -> Referral:
    return Referral.objects.get(partner__code="PARTNER_B")


def event(type_: str, referral_id, data: dict, *, event_id: str | None = None, at: datetime.datetime = T0) -> dict:
    return {
        "event_id": event_id or f"EV-{uuid.uuid4().hex[:12]}",
        "type": type_,
        "referral_id": str(referral_id),
        "occurred_at": at.isoformat(),
        "data": data,
    }


def encode(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def post(client, code: str, body: dict | bytes, *, secret: str | None = None, timestamp=None, headers=None):
    """POST a callback the way a partner does: the raw bytes, signed with the partner's secret."""
    raw = body if isinstance(body, bytes) else encode(body)
    signed = signing.sign(secret or f"secret-{code.lower()}", raw, timestamp=timestamp)
    sent = signed if headers is None else headers
    return client.post(f"/api/v1/partners/{code}/callbacks/", data=raw, content_type="application/json", headers=sent)


def receive_and_apply(client, code: str, body: dict):
    response = post(client, code, body)
    assert response.status_code == 200, response.content
    stored = CallbackEvent.objects.get(partner__code=code, event_id=body["event_id"])
    return response, callback_apply_task(stored.pk)


# --- signature ----------------------------------------------------------------------------------
def test_a_signed_event_is_stored_once_and_answered_200(client, referral):
    body = event("application.accepted", referral.pk, {"application_id": "A-APP-1", "reason": ""})
    response = post(client, "PARTNER_A", body)
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "accepted", "event_id": body["event_id"]}
    stored = CallbackEvent.objects.get()
    assert (stored.type, stored.status, stored.referral_id) == ("application.accepted", "received", referral.pk)


def test_wrong_secret_is_401(client, referral):
    body = event("loan.approved", referral.pk, {"loan_id": "L-1"})
    response = post(client, "PARTNER_A", body, secret="secret-partner_b")
    assert response.status_code == 401
    assert not CallbackEvent.objects.exists()


def test_tampered_body_is_401(client, referral):
    body = event("loan.approved", referral.pk, {"loan_id": "L-1", "credit_limit": "1000.00"})
    headers = signing.sign("secret-partner_a", encode(body))
    body["data"]["credit_limit"] = "900000.00"
    response = post(client, "PARTNER_A", body, headers=headers)
    assert response.status_code == 401
    assert not CallbackEvent.objects.exists()


@pytest.mark.parametrize("offset", [-301, -3600, 301, 3600], ids=["301s-old", "1h-old", "301s-ahead", "1h-ahead"])
def test_a_timestamp_more_than_300s_away_is_401(client, referral, offset):
    body = event("loan.approved", referral.pk, {"loan_id": "L-1"})
    response = post(client, "PARTNER_A", body, timestamp=int(time.time()) + offset)
    assert response.status_code == 401
    assert "stale" in response.json()["detail"]
    assert not CallbackEvent.objects.exists()


@pytest.mark.parametrize("offset", [-290, 290])
def test_a_timestamp_inside_the_window_is_accepted(client, referral, offset):
    body = event("loan.approved", referral.pk, {"loan_id": "L-1"})
    assert post(client, "PARTNER_A", body, timestamp=int(time.time()) + offset).status_code == 200


@pytest.mark.parametrize("missing", [signing.TIMESTAMP_HEADER, signing.SIGNATURE_HEADER, "both"])
def test_missing_signature_headers_are_401(client, referral, missing):
    body = event("loan.approved", referral.pk, {"loan_id": "L-1"})
    headers = signing.sign("secret-partner_a", encode(body))
    headers = {} if missing == "both" else {k: v for k, v in headers.items() if k != missing}
    response = post(client, "PARTNER_A", body, headers=headers)
    assert response.status_code == 401
    assert "missing" in response.json()["detail"]
    assert not CallbackEvent.objects.exists()


# --- malformed ----------------------------------------------------------------------------------
def test_malformed_json_is_400(client, referral):
    response = post(client, "PARTNER_A", b'{"event_id": "EV-1", "type": ')
    assert response.status_code == 400
    assert "non_field_errors" in response.json()


def test_a_json_array_is_400(client, referral):
    response = post(client, "PARTNER_A", b"[1, 2]")
    assert response.status_code == 400
    assert "non_field_errors" in response.json()


def test_unknown_type_is_400_naming_type(client, referral):
    response = post(client, "PARTNER_A", event("loan.exploded", referral.pk, {"loan_id": "L-1"}))
    assert response.status_code == 400
    assert set(response.json()) == {"type"}
    assert not CallbackEvent.objects.exists()


@pytest.mark.parametrize(
    ("type_", "data", "field"),
    [
        ("loan.disbursed", {"loan_id": "L-1", "apr": "0.18", "term_months": 12, "first_due_date": "2026-12-28"},
         "principal"),
        ("repayment.posted", {"loan_id": "L-1", "installment": 1, "due_date": "2026-12-28", "principal": "1.00",
                              "interest": "0.10"}, "paid_date"),
        ("loan.overdue", {"loan_id": "L-1", "installment": 1, "due_date": "2026-12-28"}, "days_past_due"),
        ("loan.closed", {}, "loan_id"),
        ("application.returned", {}, "reason"),
        ("loan.disbursed", {"loan_id": "L-1", "principal": "-5.00", "apr": "0.18", "term_months": 12,
                            "first_due_date": "2026-12-28"}, "principal"),
    ],
    ids=["disbursed-no-principal", "repayment-no-paid-date", "overdue-no-days", "closed-no-loan-id",
         "returned-no-reason", "negative-principal"],
)  # fmt: skip
def test_a_missing_or_bad_data_field_is_400_naming_it(client, referral, type_, data, field):
    response = post(client, "PARTNER_A", event(type_, referral.pk, data))
    assert response.status_code == 400
    errors = response.json()
    assert set(errors) == {"data"}
    assert field in errors["data"], errors
    assert not CallbackEvent.objects.exists()


@pytest.mark.parametrize("field", ["event_id", "type", "referral_id", "occurred_at", "data"])
def test_a_missing_top_level_field_is_400_naming_it(client, referral, field):
    body = event("loan.approved", referral.pk, {"loan_id": "L-1"})
    del body[field]
    response = post(client, "PARTNER_A", body)
    assert response.status_code == 400
    assert field in response.json()
    assert not CallbackEvent.objects.exists()


# --- who may report what --------------------------------------------------------------------------
def test_unknown_partner_is_404(client, referral):
    response = post(client, "PARTNER_X", event("loan.approved", referral.pk, {"loan_id": "L-1"}))
    assert response.status_code == 404


def test_unknown_referral_is_404(client, referral):
    response = post(client, "PARTNER_A", event("loan.approved", uuid.uuid4(), {"loan_id": "L-1"}))
    assert response.status_code == 404
    assert not CallbackEvent.objects.exists()


def test_a_referral_of_another_partner_is_404(client, referral, other_referral):
    # PARTNER_A, correctly signed, reports on PARTNER_B's referral.
    response = post(client, "PARTNER_A", event("loan.approved", other_referral.pk, {"loan_id": "L-1"}))
    assert response.status_code == 404
    assert not CallbackEvent.objects.exists()
    assert not Loan.objects.exists()


# --- exactly once -------------------------------------------------------------------------------------
def repayment(referral_id, installment: int, *, event_id: str | None = None, at=T0) -> dict:
    due = datetime.date(2026, 12, 28) + datetime.timedelta(days=30 * (installment - 1))
    data = {
        "loan_id": "L-1", "installment": installment, "due_date": due.isoformat(), "paid_date": due.isoformat(),
        "principal": "2500.00", "interest": "375.00",
    }  # fmt: skip
    return event("repayment.posted", referral_id, data, event_id=event_id, at=at)


def test_a_replayed_event_is_200_and_changes_nothing(client, referral):
    body = repayment(referral.pk, 1, event_id="EV-REPAY-1")
    first, outcome = receive_and_apply(client, "PARTNER_A", body)
    assert (first.json()["status"], outcome) == ("accepted", "processed")

    again = post(client, "PARTNER_A", body)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "event_id": "EV-REPAY-1"}
    # Same meaning, other bytes (key order, spacing): still the same event.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2).encode()
    assert post(client, "PARTNER_A", reordered).json()["status"] == "duplicate"
    stored = CallbackEvent.objects.get()
    assert callback_apply_task(stored.pk) == "already"  # a redelivered task changes nothing either
    assert CallbackEvent.objects.count() == 1
    assert Repayment.objects.count() == 1


def test_the_same_event_id_with_another_body_is_409(client, referral):
    body = repayment(referral.pk, 1, event_id="EV-REPAY-1")
    receive_and_apply(client, "PARTNER_A", body)
    changed = {**body, "data": {**body["data"], "interest": "999.00"}}
    response = post(client, "PARTNER_A", changed)
    assert response.status_code == 409
    assert "event_id" in response.json()
    assert CallbackEvent.objects.count() == 1
    assert Repayment.objects.get().interest == Decimal("375.00")


def test_event_ids_are_per_partner(client, referral, other_referral):
    """Two partners may use the same event id: each is its own event."""
    Referral.objects.filter(pk=other_referral.pk).update(status="submitted")
    a = post(client, "PARTNER_A", event("loan.approved", referral.pk, {"loan_id": "L-1"}, event_id="EV-1"))
    b = post(client, "PARTNER_B", event("loan.approved", other_referral.pk, {"loan_id": "L-9"}, event_id="EV-1"))
    assert (a.status_code, b.status_code) == (200, 200)
    assert CallbackEvent.objects.count() == 2


# --- a loan's whole life --------------------------------------------------------------------------------
def day(n: int, hour: int = 12) -> datetime.datetime:
    return T0 + datetime.timedelta(days=n, hours=hour - 12)


def test_a_full_life_gives_the_loan_its_repayments_and_overdue(client, referral):
    first_due = datetime.date(2026, 12, 28)
    events = [
        event("application.accepted", referral.pk, {"application_id": "A-APP-1", "reason": "approved"}, at=day(0)),
        event("loan.approved", referral.pk, {"loan_id": "L-1", "credit_limit": "50000.00"}, at=day(1)),
        event("loan.disbursed", referral.pk, {"loan_id": "L-1", "principal": "30000.00", "apr": "0.1800",
                                              "term_months": 3, "first_due_date": first_due.isoformat()}, at=day(2)),
        event("repayment.posted", referral.pk, {"loan_id": "L-1", "installment": 1, "due_date": "2026-12-28",
                                                "paid_date": "2026-12-27", "principal": "10000.00",
                                                "interest": "450.00"}, at=day(30)),
        event("loan.overdue", referral.pk, {"loan_id": "L-1", "installment": 2, "due_date": "2027-01-28",
                                            "days_past_due": 5}, at=day(66)),
        event("repayment.posted", referral.pk, {"loan_id": "L-1", "installment": 2, "due_date": "2027-01-28",
                                                "paid_date": "2027-02-04", "principal": "10000.00",
                                                "interest": "300.00"}, at=day(68)),
        event("repayment.posted", referral.pk, {"loan_id": "L-1", "installment": 3, "due_date": "2027-02-28",
                                                "paid_date": "2027-02-28", "principal": "10000.00",
                                                "interest": "150.00"}, at=day(92)),
        event("loan.closed", referral.pk, {"loan_id": "L-1"}, at=day(92, hour=18)),
    ]  # fmt: skip
    outcomes = [receive_and_apply(client, "PARTNER_A", body)[1] for body in events]

    assert outcomes == ["processed"] * len(events)
    referral.refresh_from_db()
    assert (referral.status, referral.accepted_at, referral.application_id) == ("submitted", day(0), "A-APP-1")
    loan = Loan.objects.get()
    assert (loan.partner.code, loan.loan_id, loan.referral_id, loan.status) == (
        "PARTNER_A",
        "L-1",
        referral.pk,
        "closed",
    )
    assert (loan.credit_limit, loan.principal, loan.apr, loan.term_months, loan.first_due_date) == (
        Decimal("50000.00"), Decimal("30000.00"), Decimal("0.1800"), 3, first_due,
    )  # fmt: skip
    assert (loan.approved_at, loan.disbursed_at, loan.ended_at) == (day(1), day(2), day(92, hour=18))
    rows = list(Repayment.objects.values_list("installment", "paid_date", "principal", "interest"))
    assert rows == [
        (1, datetime.date(2026, 12, 27), Decimal("10000.00"), Decimal("450.00")),
        (2, datetime.date(2027, 2, 4), Decimal("10000.00"), Decimal("300.00")),
        (3, datetime.date(2027, 2, 28), Decimal("10000.00"), Decimal("150.00")),
    ]
    [overdue] = LoanOverdue.objects.all()
    assert (overdue.installment, overdue.due_date, overdue.days_past_due, overdue.occurred_at) == (
        2, datetime.date(2027, 1, 28), 5, day(66),
    )  # fmt: skip
    assert set(CallbackEvent.objects.values_list("status", flat=True)) == {"processed"}


def test_a_rejection_by_callback_ends_the_referral_rejected(client, referral):
    body = event("application.rejected", referral.pk, {"application_id": "A-APP-1", "reason": "multi_lending"})
    assert receive_and_apply(client, "PARTNER_A", body)[1] == "processed"
    referral.refresh_from_db()
    assert (referral.status, referral.status_reason, referral.accepted_at) == ("rejected", "multi_lending", None)


def test_returned_after_acceptance_makes_the_referral_returned(client, referral):
    accepted = event("application.accepted", referral.pk, {"application_id": "A-APP-1"}, at=day(0))
    returned = event("application.returned", referral.pk, {"reason": "duplicate"}, at=day(1))
    receive_and_apply(client, "PARTNER_A", accepted)
    assert receive_and_apply(client, "PARTNER_A", returned)[1] == "processed"
    referral.refresh_from_db()
    assert (referral.status, referral.accepted_at, referral.returned_at) == ("returned", day(0), day(1))
    assert referral.status_reason == "returned: duplicate"


def test_returned_before_its_acceptance_waits_for_it(client, referral):
    accepted = event("application.accepted", referral.pk, {"application_id": "A-APP-1"}, at=day(0))
    returned = event("application.returned", referral.pk, {"reason": "duplicate"}, at=day(1))
    assert receive_and_apply(client, "PARTNER_A", returned)[1] == "waiting"
    assert Referral.objects.get(pk=referral.pk).status == "submitting"
    assert receive_and_apply(client, "PARTNER_A", accepted)[1] == "processed"
    referral.refresh_from_db()
    assert (referral.status, referral.accepted_at, referral.returned_at) == ("returned", day(0), day(1))
    assert set(CallbackEvent.objects.values_list("status", flat=True)) == {"processed"}


# --- any order, any duplication: the same result ---------------------------------------------------------------
def money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01'))}"


@st.composite
def life_events(draw, referral_id) -> list[dict]:
    """A realistic event list for one referral, in the order it happened."""
    ref = str(referral_id)
    accepted = event("application.accepted", ref, {"application_id": "A-APP-1", "reason": "ok"}, at=day(0))
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter of lives: handed back as a duplicate
        return [accepted, event("application.returned", ref, {"reason": "duplicate"}, at=day(1))]
    term = draw(st.sampled_from([3, 6, 12]))
    principal = Decimal(draw(st.integers(10, 200))) * 1000
    first_due = datetime.date(2026, 12, 28)
    events = [
        accepted,
        event("loan.approved", ref, {"loan_id": "L-1", "credit_limit": money(principal * 2)}, at=day(1)),
        event("loan.disbursed", ref, {"loan_id": "L-1", "principal": money(principal), "apr": "0.1800",
                                      "term_months": term, "first_due_date": first_due.isoformat()}, at=day(2)),
    ]  # fmt: skip
    ending = draw(st.sampled_from(["closed", "defaulted", "ongoing"]))
    paid = term if ending == "closed" else draw(st.integers(0, term - 1))
    for n in range(1, paid + 1):
        due = first_due + datetime.timedelta(days=30 * (n - 1))
        late = draw(st.sampled_from([0, 0, 0, 4, 12]))
        if late > 3:
            event_at = datetime.datetime.combine(due, datetime.time(9), tzinfo=CST) + datetime.timedelta(days=3)
            data = {"loan_id": "L-1", "installment": n, "due_date": due.isoformat(), "days_past_due": 3}
            events.append(event("loan.overdue", ref, data, at=event_at))
        paid_on = due + datetime.timedelta(days=late)
        data = {
            "loan_id": "L-1", "installment": n, "due_date": due.isoformat(), "paid_date": paid_on.isoformat(),
            "principal": money(principal / term), "interest": money(principal * Decimal("0.015")),
        }  # fmt: skip
        events.append(
            event("repayment.posted", ref, data, at=datetime.datetime.combine(paid_on, datetime.time(10), tzinfo=CST))
        )
    last_due = first_due + datetime.timedelta(days=30 * paid)
    if ending == "defaulted":
        for dpd in (1, 30, 90):
            data = {"loan_id": "L-1", "installment": paid + 1, "due_date": last_due.isoformat(), "days_past_due": dpd}
            at = datetime.datetime.combine(last_due, datetime.time(9), tzinfo=CST) + datetime.timedelta(days=dpd)
            events.append(event("loan.overdue", ref, data, at=at))
        at = datetime.datetime.combine(last_due, datetime.time(9), tzinfo=CST) + datetime.timedelta(days=91)
        events.append(event("loan.defaulted", ref, {"loan_id": "L-1"}, at=at))
    elif ending == "closed":
        at = datetime.datetime.combine(last_due, datetime.time(18), tzinfo=CST) + datetime.timedelta(days=20)
        events.append(event("loan.closed", ref, {"loan_id": "L-1"}, at=at))
    return events


def final_state(referral_id) -> dict:
    referral = Referral.objects.get(pk=referral_id)
    return {
        "referral": (referral.status, referral.status_reason, referral.application_id, referral.accepted_at,
                     referral.returned_at),
        "loans": list(Loan.objects.filter(referral_id=referral_id).values_list(
            "loan_id", "status", "credit_limit", "principal", "apr", "term_months", "first_due_date", "approved_at",
            "disbursed_at", "ended_at",
        ).order_by("loan_id")),
        "repayments": list(Repayment.objects.filter(loan__referral_id=referral_id).values_list(
            "loan__loan_id", "installment", "due_date", "paid_date", "principal", "interest",
        ).order_by("loan__loan_id", "installment")),
        "overdues": list(LoanOverdue.objects.filter(loan__referral_id=referral_id).values_list(
            "loan__loan_id", "installment", "due_date", "days_past_due", "occurred_at",
        ).order_by("loan__loan_id", "installment", "days_past_due")),
        "events": CallbackEvent.objects.filter(referral_id=referral_id).count(),
        "left_unapplied": CallbackEvent.objects.filter(referral_id=referral_id, status="received").count(),
        "not_selected": list(Referral.objects.exclude(pk=referral_id).values_list("status", flat=True)),
    }  # fmt: skip


def deliver(referral: Referral, deliveries: list[dict], flush_after: list[bool], apply_orders) -> dict:
    """Receive each delivery (as the view does); apply the received events when a worker gets to
    them — sometimes at once, sometimes several later in another order. Then the final state."""
    pending: list[int] = []
    with transaction.atomic():
        for body, flush in zip(deliveries, flush_after, strict=True):
            stored, _created = callback_receive(partner=referral.partner, body=body)
            pending.append(stored.pk)  # a duplicate delivery is a redelivered task here: harmless
            if flush:
                for pk in apply_orders(pending):
                    callback_apply(pk)
                pending = []
        for pk in apply_orders(pending):
            callback_apply(pk)
        state = final_state(referral.pk)
        transaction.set_rollback(True)
    return state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_order_and_any_duplication_gives_the_in_order_result(referral, data):
    events = data.draw(life_events(referral.pk), label="events")
    shuffled = data.draw(st.permutations(events), label="arrival order")
    copies = data.draw(
        st.lists(st.tuples(st.integers(0, len(events) - 1), st.integers(0, len(events))), max_size=6),
        label="duplicates (which, where)",
    )
    deliveries = list(shuffled)
    for which, where in copies:
        deliveries.insert(min(where, len(deliveries)), events[which])
    flushes = data.draw(st.lists(st.booleans(), min_size=len(deliveries), max_size=len(deliveries)), label="flush")

    def any_order(ids: list[int]) -> list[int]:
        return data.draw(st.permutations(ids), label="apply order")

    expected = deliver(referral, events, [True] * len(events), list)
    got = deliver(referral, deliveries, flushes, any_order)

    assert expected["left_unapplied"] == 0
    assert expected["events"] == len(events)
    assert expected["referral"][0] in ("submitted", "returned")
    assert got == expected


def test_a_partner_code_that_cannot_exist_is_a_404(client, db):
    assert client.post("/api/v1/partners/A%00B/callbacks/", b"{}", content_type="application/json").status_code == 404


def test_an_event_whose_apply_message_was_lost_is_applied_by_the_sweeper(client, referral, settings):
    """The event is stored, but the message that would apply it never reaches a worker (in this
    test, on_commit callbacks do not run: exactly a lost message)."""
    from django.utils import timezone

    from referrals.services.callbacks import callbacks_sweep

    body = event("application.accepted", referral.pk, {"application_id": "A-APP-1", "reason": ""})
    assert post(client, "PARTNER_A", body).status_code == 200
    stored = CallbackEvent.objects.get()
    assert stored.status == "received"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    assert callbacks_sweep(now=timezone.now()) == 0  # too fresh: its message may just be slow
    assert callbacks_sweep(now=timezone.now() + datetime.timedelta(minutes=2)) == 1
    stored.refresh_from_db()
    referral.refresh_from_db()
    assert (stored.status, referral.status) == ("processed", "submitted")
    assert callbacks_sweep(now=timezone.now() + datetime.timedelta(minutes=3)) == 0
