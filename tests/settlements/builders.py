"""Referrals, loans and events for the settlement tests, made the way production makes them:
intake API → probe and application answered by the partner (stubbed at the HTTP boundary) →
signed callbacks posted to the callbacks endpoint and applied as a worker would."""

from __future__ import annotations

import datetime
import itertools
import json
import uuid

import responses

from partners import signing
from partners.models import Partner
from referrals.models import CallbackEvent, Dispatch, Referral
from referrals.services.dispatch import dispatch_send
from referrals.tasks import callback_apply_task
from tests.factories import intake_payload

CST = datetime.timezone(datetime.timedelta(hours=8))
_seq = itertools.count(1)


def at(day: int, hour: int = 12, minute: int = 0, *, month: int = 11, year: int = 2026) -> datetime.datetime:
    """A moment in Asia/Shanghai (November 2026 unless told)."""
    return datetime.datetime(year, month, day, hour, minute, tzinfo=CST)


def submitting(origination_api, text, partner: Partner, count: int = 1) -> list[Referral]:
    """``count`` referrals of ``partner`` whose application was sent and answered ``pending``."""
    made = []
    base = partner.api_base_url
    with responses.RequestsMock(assert_all_requests_are_fired=False) as http:
        http.add(responses.POST, f"{base}/probe", json={"decision": "accept", "reason": ""})
        http.add_callback(
            responses.POST,
            f"{base}/applications",
            callback=lambda request: (
                200,
                {},
                json.dumps({"application_id": f"APP-{uuid.uuid4().hex[:10]}", "decision": "pending"}),
            ),
            content_type="application/json",
        )
        for _ in range(count):
            body = intake_payload(text=text, partners=[partner.code], seq=next(_seq))
            response = origination_api.post("/api/v1/applicants/", body, format="json")
            assert response.status_code == 201, response.content
            referral = Referral.objects.get(applicant_id=response.json()["id"], partner=partner)
            for kind in (Dispatch.Kind.PROBE, Dispatch.Kind.APPLICATION):
                dispatch = Dispatch.objects.get(referral=referral, kind=kind)
                assert dispatch_send(dispatch.pk) == "succeeded"
            referral.refresh_from_db()
            assert referral.status == Referral.Status.SUBMITTING, referral.status
            made.append(referral)
    return made


class PartnerSide:
    """Posts one partner's signed callbacks and applies them, like the partner and a worker."""

    def __init__(self, client, partner: Partner):
        self.client, self.partner = client, partner
        self.secret = partner.api_secret

    def send(self, type_: str, referral: Referral, when: datetime.datetime, **data) -> CallbackEvent:
        body = {
            "event_id": f"EV-{uuid.uuid4().hex[:16]}", "type": type_, "referral_id": str(referral.pk),
            "occurred_at": when.isoformat(), "data": {k: str(v) if not isinstance(v, int) else v for k, v in data.items()},
        }  # fmt: skip
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        response = self.client.post(
            f"/api/v1/partners/{self.partner.code}/callbacks/", data=raw, content_type="application/json",
            headers=signing.sign(self.secret, raw),
        )  # fmt: skip
        assert response.status_code == 200, response.content
        event = CallbackEvent.objects.get(partner=self.partner, event_id=body["event_id"])
        callback_apply_task(event.pk)
        event.refresh_from_db()
        return event

    # The partner protocol's events, by name.
    def accepted(self, referral, when):
        return self.send("application.accepted", referral, when, application_id=referral.application_id, reason="")

    def returned(self, referral, when, reason="duplicate"):
        return self.send("application.returned", referral, when, reason=reason)

    def approved(self, referral, when, loan_id, credit_limit="50000.00"):
        return self.send("loan.approved", referral, when, loan_id=loan_id, credit_limit=credit_limit)

    def disbursed(self, referral, when, loan_id, principal, apr="0.1800", term_months=12, first_due_date="2026-12-15"):
        return self.send(
            "loan.disbursed", referral, when, loan_id=loan_id, principal=principal, apr=apr,
            term_months=term_months, first_due_date=first_due_date,
        )  # fmt: skip

    def repaid(self, referral, when, loan_id, installment, interest, principal="1000.00", due=None, paid=None):
        paid = paid or when.date()
        return self.send(
            "repayment.posted", referral, when, loan_id=loan_id, installment=installment,
            due_date=(due or paid).isoformat(), paid_date=paid.isoformat(), principal=principal, interest=interest,
        )  # fmt: skip

    def overdue(self, referral, when, loan_id, days_past_due, installment=1, due="2026-10-15"):
        return self.send(
            "loan.overdue", referral, when, loan_id=loan_id, installment=installment, due_date=due,
            days_past_due=days_past_due,
        )  # fmt: skip
