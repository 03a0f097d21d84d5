"""Settlement runs with real concurrency and a real Celery worker (PostgreSQL + Redis).

- the run is a task on a real worker process: the API answers 202 at once, progress moves from
  0 to 1 as partners are done, and the statements equal the in-process computation;
- runs started at the same time for the same month, and an approval racing a run, leave one
  statement per partner, every fee once, and the approved statement untouched.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection

from settlements.models import SettlementRun, Statement, StatementLine
from settlements.services import runs
from settlements.services.statements import statement_approve, statement_compute, statement_submit
from settlements.tasks import settlement_run_task
from tests.factories import PartnerFactory, make_contract
from tests.referrals import workers
from tests.referrals.workers import wait_for
from tests.settlements.builders import PartnerSide, at, submitting
from tests.settlements.conftest import WORKED_EXAMPLE_CLAWBACK, WORKED_EXAMPLE_FEES

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def month(contract, origination_api, text, partner, side, partnership_manager, compliance_officer, client):
    """Three partners with accepted referrals, loans and repayments in November."""
    others = [PartnerFactory(code=code) for code in ("PARTNER_B", "PARTNER_C")]
    for other in others:
        make_contract(other, drafter=partnership_manager, approver=compliance_officer, fees=WORKED_EXAMPLE_FEES,
                      clawback=WORKED_EXAMPLE_CLAWBACK)  # fmt: skip
    for each in [partner, *others]:
        partner_side = side if each == partner else PartnerSide(client, each)
        for index, referral in enumerate(submitting(origination_api, text, each, 3)):
            partner_side.accepted(referral, at(2, 9 + index))
            partner_side.disbursed(referral, at(3, 9 + index), f"L-{each.code}-{index}", "12345.67")
            partner_side.repaid(referral, at(20, 9), f"L-{each.code}-{index}", 1, "98.77")
    return [partner, *others]


@pytest.fixture
def worker_queue(monkeypatch, tmp_path):
    name = workers.new_queue()
    task = settlement_run_task._get_current_object()
    monkeypatch.setattr(runs, "_enqueue", lambda run_id: task.apply_async((str(run_id),), queue=name))
    worker = workers.start_worker(name, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
        workers.purge(name)


def test_a_run_is_done_by_a_real_worker_with_progress(api, finance_user, month, worker_queue):
    response = api(finance_user).post("/api/v1/settlements/runs/", {"period": "2026-11"}, format="json")
    assert response.status_code == 202
    run_id = response.json()["id"]
    seen = []

    def finished():
        body = api(finance_user).get(f"/api/v1/settlements/runs/{run_id}/").json()
        seen.append(body["progress"])
        return body["status"] in ("done", "failed") and body

    body = wait_for(finished, 60, "the run to finish", poll=0.02)
    assert body["status"] == "done", worker_queue.output()[-2000:]
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    assert [row["partner"] for row in body["summary"]] == ["PARTNER_A", "PARTNER_B", "PARTNER_C"]
    # 30.00 + 30.00 + 25.00 (n = 3) + 3 × 123.46 (12,345.67 × 0.01) + 3 × 24.69 (98.77 × 0.25)
    for statement in Statement.objects.all():
        assert statement.net == Decimal("529.45"), statement
    expected = {
        (line.key, line.amount)
        for partner in month
        for line in statement_compute(partner=partner, period="2026-11", user=finance_user)[0].lines.all()
    }
    assert expected == set(StatementLine.objects.values_list("key", "amount"))


def test_runs_at_the_same_time_count_every_fee_once(finance_user, month):
    barrier = threading.Barrier(4)
    errors = []

    def run():
        try:
            barrier.wait()
            run = SettlementRun.objects.create(period="2026-11", started_by=finance_user)
            runs.run_execute(run.pk)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Statement.objects.count() == 3
    assert StatementLine.objects.count() == 3 * 9
    assert set(Statement.objects.values_list("net", flat=True)) == {Decimal("529.45")}


def test_an_approval_racing_a_run_is_never_overwritten(finance_user, second_finance_user, month, partner):
    statement, _ = statement_compute(partner=partner, period="2026-11", user=finance_user)
    statement_submit(statement=statement, user=finance_user)
    barrier = threading.Barrier(2)
    results = {}

    def approve():
        try:
            barrier.wait()
            results["approve"] = statement_approve(statement=statement, user=second_finance_user).status
        finally:
            connection.close()

    def rerun():
        try:
            barrier.wait()
            results["run"] = statement_compute(partner=partner, period="2026-11", user=finance_user)[1]
        finally:
            connection.close()

    threads = [threading.Thread(target=approve), threading.Thread(target=rerun)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"approve": "approved", "run": False}  # under review: the run leaves it alone
    statement.refresh_from_db()
    assert (statement.status, statement.net, statement.line_count) == ("approved", Decimal("529.45"), 9)
