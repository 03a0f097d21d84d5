"""Settlement runs and the statement lifecycle through the API: validation, progress, four-eyes,
every transition recorded, approved statements left alone by later runs, and who may do what."""

from __future__ import annotations

import pytest

from settlements.models import SettlementRun, Statement
from tests.settlements.builders import at, submitting


@pytest.fixture
def accepted(contract, origination_api, text, partner, side):
    referrals = submitting(origination_api, text, partner, 2)
    for index, referral in enumerate(referrals):
        side.accepted(referral, at(3, 9 + index))
    return referrals


def run(client, period="2026-11", capture=None):
    with capture(execute=True):
        response = client.post("/api/v1/settlements/runs/", {"period": period}, format="json")
    assert response.status_code == 202, response.content
    return client.get(f"/api/v1/settlements/runs/{response.json()['id']}/").json()


@pytest.fixture
def statement_id(api, finance_user, accepted, eager, django_capture_on_commit_callbacks):
    done = run(api(finance_user), capture=django_capture_on_commit_callbacks)
    assert done["status"] == "done"
    return done["summary"][0]["statement"]


# --- runs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("period", ["2026-13", "2026-1", "26-11", "", "2026-11-01", None, 202611])
def test_a_bad_period_is_a_400_naming_period_and_starts_nothing(api, finance_user, period):
    response = api(finance_user).post("/api/v1/settlements/runs/", {"period": period}, format="json")
    assert response.status_code == 400
    assert "period" in response.json()
    assert not SettlementRun.objects.exists()


def test_a_month_that_has_not_started_cannot_be_run(api, finance_user):
    response = api(finance_user).post("/api/v1/settlements/runs/", {"period": "2999-01"}, format="json")
    assert response.status_code == 400
    assert "period" in response.json()


def test_the_run_reports_progress_and_one_statement_per_partner(
    api, finance_user, accepted, eager, django_capture_on_commit_callbacks
):
    from tests.factories import PartnerFactory

    PartnerFactory(code="PARTNER_B")  # active, nothing this month: a zero statement still says so
    done = run(api(finance_user), capture=django_capture_on_commit_callbacks)
    assert (done["status"], done["progress"]) == ("done", 1.0)
    assert [(row["partner"], row["lines"], row["gross"]) for row in done["summary"]] == [
        ("PARTNER_A", 2, "63.60"),
        ("PARTNER_B", 0, "0.00"),
    ]


def test_a_run_that_fails_says_so(api, finance_user, accepted, eager, monkeypatch, django_capture_on_commit_callbacks):
    from settlements.services import runs

    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(runs, "statement_compute", broken)
    with pytest.raises(RuntimeError), django_capture_on_commit_callbacks(execute=True):
        api(finance_user).post("/api/v1/settlements/runs/", {"period": "2026-11"}, format="json")
    failed = SettlementRun.objects.get()
    assert (failed.status, failed.error) == ("failed", "RuntimeError: database went away")


@pytest.mark.parametrize("who", ["outsider", "auditor", "partnership_manager", "compliance_officer", "origination"])
def test_only_finance_may_start_a_run(api, request, who):
    response = api(request.getfixturevalue(who)).post("/api/v1/settlements/runs/", {"period": "2026-11"}, format="json")
    assert response.status_code == 403
    assert not SettlementRun.objects.exists()


# --- lifecycle ------------------------------------------------------------------------------------
def test_four_eyes_the_runner_cannot_approve_and_a_second_person_can(
    api, finance_user, second_finance_user, statement_id
):
    first, second = api(finance_user), api(second_finance_user)
    url = f"/api/v1/statements/{statement_id}"
    assert first.post(f"{url}/approve/", {}, format="json").status_code == 400  # still a draft
    assert first.post(f"{url}/submit/").json()["status"] == "under_review"
    refused = first.post(f"{url}/approve/", {}, format="json", HTTP_ACCEPT_LANGUAGE="en")
    assert refused.status_code == 403
    assert "Four-eyes" in refused.json()["detail"]
    approved = second.post(f"{url}/approve/", {"note": "checked against the bank statement"}, format="json").json()
    assert (approved["status"], approved["approved_by"]) == ("approved", "finance2")
    assert second.post(f"{url}/issue/").json()["status"] == "issued"
    assert first.post(f"{url}/pay/", {}, format="json").json()["status"] == "paid"
    history = [(t["source"], t["target"], t["by"]) for t in second.get(f"{url}/").json()["transitions"]]
    assert history == [
        ("draft", "under_review", finance_user.username),
        ("under_review", "approved", "finance2"),
        ("approved", "issued", "finance2"),
        ("issued", "paid", finance_user.username),
    ]


def test_the_submitter_cannot_approve_either(api, finance_user, second_finance_user, statement_id):
    url = f"/api/v1/statements/{statement_id}"
    assert api(second_finance_user).post(f"{url}/submit/").status_code == 200
    assert api(second_finance_user).post(f"{url}/approve/", {}, format="json").status_code == 403
    assert Statement.objects.get(pk=statement_id).status == "under_review"


def test_send_back_needs_a_reason_and_returns_the_draft(api, finance_user, second_finance_user, statement_id):
    url = f"/api/v1/statements/{statement_id}"
    api(finance_user).post(f"{url}/submit/")
    missing = api(second_finance_user).post(f"{url}/send-back/", {}, format="json")
    assert missing.status_code == 400
    assert "reason" in missing.json()
    back = api(second_finance_user).post(f"{url}/send-back/", {"reason": "R2 fee looks wrong"}, format="json").json()
    assert back["status"] == "draft"
    assert back["transitions"][-1]["note"] == "R2 fee looks wrong"


def test_disputes(api, finance_user, second_finance_user, statement_id):
    url = f"/api/v1/statements/{statement_id}"
    first, second = api(finance_user), api(second_finance_user)
    first.post(f"{url}/submit/")
    assert first.post(f"{url}/dispute/", {"reason": "partner counts 1"}, format="json").json()["status"] == "disputed"
    assert (
        first.post(f"{url}/resolve/", {"note": "re-run after their data fix"}, format="json").json()["status"]
        == "draft"
    )
    first.post(f"{url}/submit/")
    second.post(f"{url}/approve/", {}, format="json")
    second.post(f"{url}/issue/")
    assert first.post(f"{url}/dispute/", {"reason": "disputes R1"}, format="json").json()["status"] == "disputed"
    resolved = first.post(f"{url}/resolve/", {"note": "partner withdrew the claim"}, format="json").json()
    assert resolved["status"] == "issued"  # unchanged: it was approved


def test_a_later_run_leaves_an_approved_statement_alone(
    api, finance_user, second_finance_user, statement_id, side, contract, origination_api, text, partner,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    url = f"/api/v1/statements/{statement_id}"
    api(finance_user).post(f"{url}/submit/")
    api(second_finance_user).post(f"{url}/approve/", {}, format="json")
    before = api(finance_user).get(f"{url}/").json()
    (late,) = submitting(origination_api, text, partner, 1)
    side.accepted(late, at(5, 9))
    done = run(api(finance_user), capture=django_capture_on_commit_callbacks)
    assert done["summary"][0]["computed"] is False
    assert done["summary"][0]["status"] == "approved"
    assert api(finance_user).get(f"{url}/").json() == before


@pytest.mark.parametrize("who", ["outsider", "partnership_manager", "origination"])
def test_statements_are_not_for_everyone(api, request, who, statement_id):
    client = api(request.getfixturevalue(who))
    assert client.get("/api/v1/statements/").status_code == 403
    assert client.get(f"/api/v1/statements/{statement_id}/").status_code == 403


def test_auditors_read_but_cannot_move_statements(api, auditor, statement_id):
    client = api(auditor)
    assert client.get(f"/api/v1/statements/{statement_id}/").status_code == 200
    for step in ("submit", "approve", "issue", "pay"):
        assert client.post(f"/api/v1/statements/{statement_id}/{step}/", {}, format="json").status_code == 403


def test_the_statement_list_filters_and_stays_within_a_few_queries(
    api, finance_user, statement_id, django_assert_max_num_queries
):
    client = api(finance_user)
    with django_assert_max_num_queries(8):
        body = client.get("/api/v1/statements/?period=2026-11&partner=PARTNER_A").json()
    assert [row["id"] for row in body["results"]] == [statement_id]
    assert client.get("/api/v1/statements/?period=2026-10").json()["results"] == []
    with django_assert_max_num_queries(10):
        assert len(client.get(f"/api/v1/statements/{statement_id}/").json()["lines"]) == 2


def test_a_run_that_stopped_moving_is_requeued_and_finishes(
    finance_user, accepted, eager, django_capture_on_commit_callbacks
):
    import datetime

    from django.utils import timezone

    from settlements.services.runs import runs_sweep

    long_ago = timezone.now() - datetime.timedelta(hours=2)
    stalled = SettlementRun.objects.create(period="2026-11", started_by=finance_user, updated_at=long_ago)
    moving = SettlementRun.objects.create(period="2026-11", started_by=finance_user)  # its worker is on it
    with django_capture_on_commit_callbacks(execute=True):
        assert runs_sweep() == 1
    stalled.refresh_from_db()
    moving.refresh_from_db()
    assert (stalled.status, stalled.progress) == ("done", 1.0)
    assert moving.status == "running"
    assert Statement.objects.get().net == 60
