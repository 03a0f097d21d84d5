"""settlement-rules.md's worked example, to the cent, through the real pipeline: referrals made by
the intake API and answered by the partner, events posted as signed callbacks and applied, the
month run through ``POST /api/v1/settlements/runs/`` as a Celery task, the statement read back."""

from __future__ import annotations

import datetime
from collections import Counter
from decimal import Decimal

import pytest

from tests.settlements.builders import at, submitting


@pytest.fixture
def november(contract, origination_api, text, partner, side):
    r1, r2, r3, r4 = submitting(origination_api, text, partner, 4)
    side.accepted(r1, at(2, 9))
    side.accepted(r2, at(2, 10))
    side.accepted(r3, at(3, 9))
    side.accepted(r4, at(3, 15))
    side.returned(r2, at(2, 20))  # 10 hours after acceptance
    side.approved(r1, at(4, 10), "L-R1")
    side.disbursed(r1, at(5, 10), "L-R1", "20000.00")
    side.repaid(r1, at(20, 10), "L-R1", 1, "166.67")
    side.approved(r3, at(4, 11), "L-R3")
    side.disbursed(r3, at(5, 11), "L-R3", "8333.33")
    side.overdue(r3, at(25, 9), "L-R3", 31)
    return r1, r2, r3, r4


def test_the_worked_example_comes_out_to_the_cent(
    api, finance_user, november, eager, django_capture_on_commit_callbacks
):
    r1, r2, r3, r4 = november
    finance = api(finance_user)
    with django_capture_on_commit_callbacks(execute=True):
        started = finance.post("/api/v1/settlements/runs/", {"period": "2026-11"}, format="json")
    assert started.status_code == 202, started.content
    run = finance.get(f"/api/v1/settlements/runs/{started.json()['id']}/").json()
    assert (run["period"], run["status"], run["progress"]) == ("2026-11", "done", 1.0)

    listed = finance.get("/api/v1/statements/?period=2026-11&partner=PARTNER_A").json()["results"]
    assert len(listed) == 1
    statement = finance.get(f"/api/v1/statements/{listed[0]['id']}/").json()
    assert (statement["net"], statement["vat"], statement["gross"]) == ("326.67", "19.60", "346.27")
    assert statement["status"] == "draft"

    lines = Counter((line["line_type"], line["referral"], line["amount"]) for line in statement["lines"])
    assert lines == Counter(
        {
            ("application_fee", str(r1.pk), "30.00"): 1,
            ("application_fee", str(r2.pk), "30.00"): 1,
            ("application_fee", str(r3.pk), "25.00"): 1,
            ("application_fee", str(r4.pk), "25.00"): 1,
            ("clawback_returned", str(r2.pk), "-30.00"): 1,
            ("approval_fee", str(r1.pk), "5.00"): 1,
            ("approval_fee", str(r3.pk), "5.00"): 1,
            ("disbursement_fee", str(r1.pk), "200.00"): 1,
            ("disbursement_fee", str(r3.pk), "83.33"): 1,
            ("interest_share", str(r1.pk), "41.67"): 1,
            ("clawback_fpd", str(r3.pk), "-88.33"): 1,
        }
    )
    assert not any(line["late"] for line in statement["lines"])
    # Every line can be traced: the events behind them are linked.
    linked = {line["line_type"] for line in statement["lines"] if line["event"]}
    assert linked == {
        "application_fee", "clawback_returned", "approval_fee", "disbursement_fee", "interest_share", "clawback_fpd"
    }  # fmt: skip
    repayment_line = next(line for line in statement["lines"] if line["line_type"] == "interest_share")
    assert datetime.datetime.fromisoformat(repayment_line["occurred_at"]) == at(20, 0)
    assert sum(Decimal(line["amount"]) for line in statement["lines"]) == Decimal("326.67")


def test_running_the_month_again_gives_identical_statements(
    api, finance_user, november, eager, django_capture_on_commit_callbacks
):
    finance = api(finance_user)

    def run_and_read():
        with django_capture_on_commit_callbacks(execute=True):
            assert finance.post("/api/v1/settlements/runs/", {"period": "2026-11"}, format="json").status_code == 202
        listed = finance.get("/api/v1/statements/?period=2026-11").json()["results"]
        detail = finance.get(f"/api/v1/statements/{listed[0]['id']}/").json()
        lines = sorted(
            (x["line_type"], x["referral"], x["loan"], x["event"], x["amount"], x["occurred_at"], x["late"])
            for x in detail["lines"]
        )
        return detail["id"], detail["net"], detail["vat"], detail["gross"], lines

    assert run_and_read() == run_and_read()
