"""The settlement screens: runs (start one, watch its progress), statements (lines by type, the
lifecycle buttons through the services, four-eyes, reconciliation uploads) and the revenue chart —
who may see and do what, and that every page stays within a fixed number of queries."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import translation

from settlements.admin import statements as statements_admin
from settlements.models import (
    LineType,
    Reconciliation,
    SettlementRun,
    Statement,
    StatementLine,
    StatementTransition,
)
from settlements.services.reconcile import statement_reconcile
from settlements.services.statements import statement_compute, statement_submit
from tests.settlements.builders import at, submitting
from tests.signin import TwoFactorClient

PERIOD = "2026-11"


# --- helpers --------------------------------------------------------------------------------------
def url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def statement_url(statement: Statement, name: str = "change", *args) -> str:
    return url(f"settlements_statement_{name}", statement.pk, *args)


def act_url(statement: Statement, action: str) -> str:
    return statement_url(statement, "act", action)


def browser(user, language: str = "en") -> TwoFactorClient:
    """A logged-in admin session in English, so the tests read the source strings (the Chinese
    catalogue has its own test below). Not the ``client`` fixture: the partner's callbacks use it."""
    client = TwoFactorClient(headers={"Accept-Language": language})  # signed in with both factors
    client.force_login(user)
    return client


def messages_of(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def by_testid(html: str, name: str) -> str:
    """The text inside the first element with ``data-testid="name"`` (tags stripped)."""
    match = re.search(rf'data-testid="{re.escape(name)}"[^>]*>(.*?)</', html, re.S)
    assert match, f"no data-testid={name!r} on the page"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def csv_upload(rows: list[tuple], *, header: str = "referral_id,line_type,amount") -> SimpleUploadedFile:
    body = "\n".join([header, *(",".join(str(cell) for cell in row) for row in rows)]) + "\n"
    return SimpleUploadedFile("partner-2026-11.csv", body.encode(), content_type="text/csv")


@pytest.fixture(autouse=True)
def _keep_active_language():
    """LocaleMiddleware activates each request's language for the thread: put ours back afterwards."""
    with translation.override(translation.get_language()):
        yield


# --- data -----------------------------------------------------------------------------------------
@pytest.fixture
def lent(contract, origination_api, text, partner, side):
    """Two accepted referrals of PARTNER_A in November; the first got a loan, approved and disbursed."""
    referrals = submitting(origination_api, text, partner, 2)
    for index, referral in enumerate(referrals):
        side.accepted(referral, at(3, 9 + index))
    side.approved(referrals[0], at(5, 10), "LN-0001")
    side.disbursed(referrals[0], at(6, 10), "LN-0001", principal="30000.00")
    return referrals


@pytest.fixture
def statement(lent, partner, finance_user) -> Statement:
    statement, computed = statement_compute(partner=partner, period=PERIOD, user=finance_user)
    assert computed
    assert statement.line_count == 4
    return Statement.objects.get(pk=statement.pk)


@pytest.fixture
def under_review(statement, finance_user) -> Statement:
    return statement_submit(statement=statement, user=finance_user)


# --- who may see what -----------------------------------------------------------------------------
def pages(statement: Statement, run: SettlementRun) -> dict[str, str]:
    return {
        "runs": url("settlements_settlementrun_changelist"),
        "run add": url("settlements_settlementrun_add"),
        "run": url("settlements_settlementrun_change", run.pk),
        "statements": url("settlements_statement_changelist"),
        "statement": statement_url(statement),
        "revenue": url("settlements_statement_revenue"),
    }


@pytest.fixture
def run(finance_user) -> SettlementRun:
    return SettlementRun.objects.create(period=PERIOD, started_by=finance_user, progress=0.25)


# Whatever the number of statements, lines or differences (each list is capped and counted apart).
QUERY_BUDGET = {"runs": 7, "run add": 5, "run": 6, "statements": 10, "statement": 12, "revenue": 6}


@pytest.mark.parametrize("screen", list(QUERY_BUDGET))
def test_every_page_renders_for_finance_within_a_few_queries(
    screen, statement, lent, run, finance_user, second_finance_user, page_queries
):
    if screen == "statement":  # the most a statement's page shows: under review, reconciled, a warning
        statement_submit(statement=statement, user=finance_user)
        statement_reconcile(
            statement=statement, user=finance_user, content=csv_upload(partner_rows(statement, lent)).read()
        )
        finance_user = second_finance_user
    client = browser(finance_user)
    target = pages(statement, run)[screen]
    client.get(target)  # warm the session and the permission cache; count a normal request
    with page_queries(QUERY_BUDGET[screen]):
        response = client.get(target)
    assert response.status_code == 200


@pytest.mark.parametrize("screen", [name for name in QUERY_BUDGET if name != "run add"])
def test_the_auditor_reads_every_page(screen, statement, run, auditor):
    assert browser(auditor).get(pages(statement, run)[screen]).status_code == 200


def test_the_auditor_may_not_start_a_run_nor_move_or_reconcile_a_statement(statement, auditor):
    client = browser(auditor)
    assert client.get(url("settlements_settlementrun_add")).status_code == 403
    assert client.post(url("settlements_settlementrun_add"), {"period": PERIOD}).status_code == 403
    assert client.post(act_url(statement, "submit")).status_code == 403
    upload = csv_upload([(statement.lines.first().referral_id, "application_fee", "30.00")])
    assert client.post(statement_url(statement, "reconcile"), {"file": upload}).status_code == 403
    page = client.get(statement_url(statement)).content.decode()
    assert 'data-testid="submit"' not in page
    assert 'data-testid="reconcile-file"' not in page
    assert 'data-testid="export-csv"' in page  # auditors export
    assert 'data-testid="run-add"' not in client.get(url("settlements_settlementrun_changelist")).content.decode()
    statement.refresh_from_db()
    assert statement.status == Statement.Status.DRAFT
    assert not SettlementRun.objects.exists()
    assert not Reconciliation.objects.exists()


@pytest.mark.parametrize("screen", list(QUERY_BUDGET))
def test_a_staff_member_without_settlement_permissions_gets_403(screen, statement, run, partnership_manager):
    assert browser(partnership_manager).get(pages(statement, run)[screen]).status_code == 403


@pytest.mark.parametrize("screen", list(QUERY_BUDGET))
def test_someone_outside_the_back_office_is_sent_to_log_in(screen, statement, run, outsider):
    response = browser(outsider).get(pages(statement, run)[screen])
    assert response.status_code == 302
    assert response["Location"].startswith(url("login"))


def test_posts_without_permission_are_refused_and_change_nothing(statement, partnership_manager, compliance_officer):
    for user in (partnership_manager, compliance_officer):
        client = browser(user)
        assert client.post(act_url(statement, "submit")).status_code == 403
        assert client.post(statement_url(statement, "reconcile"), {}).status_code == 403
        assert client.post(url("settlements_settlementrun_add"), {"period": PERIOD}).status_code == 403
    statement.refresh_from_db()
    assert statement.status == Statement.Status.DRAFT
    assert not StatementTransition.objects.exists()


def test_unknown_statements_and_actions_are_404(statement, finance_user):
    client = browser(finance_user)
    assert client.get(url("settlements_statement_change", "not-a-uuid")).status_code == 404
    assert client.get(url("settlements_statement_change", "6f1c9a52-0000-4000-8000-000000000000")).status_code == 404
    assert client.post(act_url(statement, "explode")).status_code == 404
    assert client.get(act_url(statement, "submit")).status_code == 405


# --- runs -----------------------------------------------------------------------------------------
def test_the_run_form_starts_a_run_that_computes_the_statements(
    lent, finance_user, eager, django_capture_on_commit_callbacks
):
    client = browser(finance_user)
    form = client.get(url("settlements_settlementrun_add")).content.decode()
    assert 'data-testid="run-period"' in form
    assert 'data-testid="run-start"' in form
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url("settlements_settlementrun_add"), {"period": PERIOD})
    run = SettlementRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == url("settlements_settlementrun_change", run.pk)
    assert ("success", f"The settlement run for {PERIOD} has started.") in messages_of(response)
    assert (run.period, run.started_by, run.status, run.progress) == (PERIOD, finance_user, "done", 1.0)

    page = client.get(response["Location"]).content.decode()
    statement = Statement.objects.get(period=PERIOD)
    assert '<progress class="run-progress" data-testid="run-progress" max="100" value="100">' in page
    assert by_testid(page, "run-progress-text") == "100%"
    assert f'data-poll-url="/api/v1/settlements/runs/{run.pk}/"' in page
    assert 'data-poll-interval="500"' in page
    assert "/static/settlements/run_progress.js" in page
    assert "<script>" not in page  # only a src'd script and the json_script data block
    links = re.search(r'<ul class="run-statements" data-testid="run-statements">(.*?)</ul>', page, re.S)
    assert links, "the statements list is hidden or missing"
    assert f'href="{statement_url(statement)}"' in links.group(1)
    assert "PARTNER_A 2026-11" in links.group(1)

    # The page polls the API with the admin's session.
    api = client.get(f"/api/v1/settlements/runs/{run.pk}/")
    assert api.status_code == 200
    assert api.json()["summary"][0]["statement"] == str(statement.pk)


def test_a_running_run_hides_the_links_until_it_has_finished(run, finance_user):
    page = browser(finance_user).get(url("settlements_settlementrun_change", run.pk)).content.decode()
    assert 'data-status="running"' in page
    assert 'value="25"' in page
    assert by_testid(page, "run-progress-text") == "25%"
    assert re.search(r'data-testid="run-statements" hidden', page)
    assert json.loads(re.search(r'id="run-labels" type="application/json">(.*?)</script>', page).group(1))["lines"]


def test_a_failed_run_shows_its_error_and_what_it_produced(run, statement, finance_user):
    SettlementRun.objects.filter(pk=run.pk).update(
        status=SettlementRun.Status.FAILED,
        error="RuntimeError: database went away",
        summary=[{"partner": "PARTNER_A", "statement": str(statement.pk), "computed": False, "status": "draft"}],
    )
    page = browser(finance_user).get(url("settlements_settlementrun_change", run.pk)).content.decode()
    assert by_testid(page, "run-error") == "RuntimeError: database went away"
    assert 'data-testid="run-error" hidden' not in page
    links = re.search(r'data-testid="run-statements">(.*?)</ul>', page, re.S).group(1)
    assert f'href="{statement_url(statement)}"' in links
    assert "left as it is (no longer a draft)" in links


@pytest.mark.parametrize(
    ("period", "message"),
    [("2026-13", "A period is a month written YYYY-MM"), ("2999-01", "2999-01 has not started yet.")],
)
def test_a_bad_period_shows_the_services_message_next_to_the_field(finance_user, period, message):
    response = browser(finance_user).post(url("settlements_settlementrun_add"), {"period": period})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == ["period"]
    assert message in errors["period"][0]
    assert message in response.content.decode()
    assert not SettlementRun.objects.exists()


def test_the_runs_list_shows_progress_bars(run, finance_user):
    page = browser(finance_user).get(url("settlements_settlementrun_changelist")).content.decode()
    assert '<progress class="run-progress" max="100" value="25">' in page
    assert f'href="{url("settlements_settlementrun_add")}" class="addlink" data-testid="run-add"' in page


# --- a statement's page ---------------------------------------------------------------------------
def test_the_statement_page_groups_lines_by_type_with_subtotals_and_links(statement, lent, finance_user):
    fees = statement.lines.get(line_type=LineType.DISBURSEMENT_FEE)
    page = browser(finance_user).get(statement_url(statement)).content.decode()
    assert by_testid(page, "statement-status") == "Draft"
    assert by_testid(page, "statement-gross") == str(statement.gross)
    groups = re.findall(r'data-testid="line-group" data-line-type="(\w+)" data-count="(\d+)"', page)
    assert groups == [("application_fee", "2"), ("approval_fee", "1"), ("disbursement_fee", "1")]
    assert "300.00" in page  # 1% of 30,000
    assert url("referrals_referral_change", lent[0].pk) in page
    assert url("referrals_loan_change", fees.loan_id) in page
    assert url("referrals_callbackevent_change", fees.event_id) in page
    assert "LN-0001" in page
    for action in ("submit",):
        assert f'data-testid="{action}"' in page
    for action in ("approve", "send-back", "issue", "pay", "dispute", "resolve"):
        assert f'data-testid="{action}"' not in page  # not from a draft
    for fmt in ("csv", "xlsx", "pdf"):
        assert f'href="/api/v1/statements/{statement.pk}/export/?format={fmt}"' in page
    assert 'data-testid="reconcile-file"' in page


def test_late_lines_are_marked_with_their_original_date(statement, finance_user):
    StatementLine.objects.filter(statement=statement, line_type=LineType.APPROVAL_FEE).update(
        late=True, occurred_at=at(20, 10, month=10)
    )
    page = browser(finance_user).get(statement_url(statement)).content.decode()
    assert by_testid(page, "late") == "late · originally 2026-10-20"
    assert "Belongs to 2026-10, already approved." in page
    assert page.count('data-testid="late"') == 1


def test_a_big_statement_lists_the_first_lines_of_each_type_and_counts_the_rest(
    statement, finance_user, monkeypatch, django_assert_max_num_queries
):
    monkeypatch.setattr(statements_admin, "LINES_SHOWN", 1)
    client = browser(finance_user)
    client.get(statement_url(statement))
    with django_assert_max_num_queries(QUERY_BUDGET["statement"]):
        page = client.get(statement_url(statement)).content.decode()
    group = re.search(r'data-line-type="application_fee".*?</table>', page, re.S).group(0)
    assert group.count('class="statement-line') == 1
    assert "1 more line of this type is counted in the subtotal" in group
    assert by_testid(group, "line-subtotal") == "60.00"


# --- the lifecycle --------------------------------------------------------------------------------
def test_submit_then_four_eyes_refuses_the_same_person_and_a_second_approves(
    statement, finance_user, second_finance_user
):
    client = browser(finance_user)
    response = client.post(act_url(statement, "submit"))
    assert response.status_code == 302
    assert response["Location"] == statement_url(statement)
    assert ("success", "PARTNER_A 2026-11 is now Under review.") in messages_of(response)

    page = client.get(statement_url(statement)).content.decode()
    assert 'data-testid="approve"' in page
    assert 'data-testid="approve-note"' in page
    assert 'data-testid="four-eyes-hint"' in page

    response = client.post(act_url(statement, "approve"), {"approve-note": "checked"}, follow=True)
    assert response.status_code == 200
    text = response.content.decode()
    assert "Four-eyes: the person who ran or submitted a statement cannot approve it." in text
    assert 'class="error"' in text  # the messages list, as an error
    statement.refresh_from_db()
    assert statement.status == Statement.Status.UNDER_REVIEW
    assert statement.approved_by is None

    second = browser(second_finance_user)
    assert 'data-testid="four-eyes-hint"' not in second.get(statement_url(statement)).content.decode()
    response = second.post(act_url(statement, "approve"), {"approve-note": "matches the partner"})
    assert response.status_code == 302
    assert ("success", "PARTNER_A 2026-11 is now Approved.") in messages_of(response)
    statement.refresh_from_db()
    assert (statement.status, statement.approved_by, statement.approval_note) == (
        "approved",
        second_finance_user,
        "matches the partner",
    )
    page = second.get(statement_url(statement)).content.decode()
    history = re.findall(r'<tr data-testid="transition">(.*?)</tr>', page, re.S)
    assert len(history) == 2
    assert "finance2" in history[1]
    assert "Under review → Approved" in history[1]
    assert "matches the partner" in history[1]
    assert 'data-testid="issue"' in page
    assert 'data-testid="approve"' not in page


def test_send_back_and_dispute_need_a_reason_shown_next_to_the_field(under_review, second_finance_user):
    client = browser(second_finance_user)
    response = client.post(act_url(under_review, "send-back"), {"send-back-reason": "  "})
    assert response.status_code == 200
    assert response.context["actions"][1]["form"].errors  # the send-back form, bound, with its error
    assert "This field is required." in response.content.decode()
    under_review.refresh_from_db()
    assert under_review.status == Statement.Status.UNDER_REVIEW

    response = client.post(act_url(under_review, "send-back"), {"send-back-reason": "line 3 is wrong"})
    assert response.status_code == 302
    under_review.refresh_from_db()
    assert under_review.status == Statement.Status.DRAFT
    assert under_review.transitions.last().note == "line 3 is wrong"


def test_the_whole_way_to_paid_and_a_dispute_resolved(under_review, second_finance_user):
    client = browser(second_finance_user)
    steps = [
        ("approve", {}, "approved"),
        ("issue", {}, "issued"),
        ("dispute", {"dispute-reason": "partner counts 1 fewer"}, "disputed"),
        ("resolve", {"resolve-note": "partner agreed"}, "issued"),
        ("pay", {"pay-note": "bank ref 123"}, "paid"),
    ]
    for name, data, status in steps:
        page = client.get(statement_url(under_review)).content.decode()
        assert f'data-testid="{name}"' in page, name
        response = client.post(act_url(under_review, name), data)
        assert response.status_code == 302, (name, response.status_code)
        under_review.refresh_from_db()
        assert under_review.status == status, name
    page = client.get(statement_url(under_review)).content.decode()
    assert 'class="statement-action' not in page  # nothing more to do once paid
    assert len(re.findall(r'data-testid="transition"', page)) == 6


def test_a_step_the_status_does_not_allow_is_an_error_message(statement, second_finance_user):
    response = browser(second_finance_user).post(act_url(statement, "issue"))
    assert response.status_code == 302
    assert messages_of(response) == [("error", "PARTNER_A 2026-11 is Draft: “Issue” does not apply.")]
    statement.refresh_from_db()
    assert statement.status == Statement.Status.DRAFT


# --- reconciliation -------------------------------------------------------------------------------
def partner_rows(statement: Statement, lent) -> list[tuple]:
    """The partner's figures: one fee they do not list, one they value differently, one of theirs only."""
    first, second = lent
    return [
        (first.pk, "application_fee", "30.00"),  # matches
        (second.pk, "application_fee", "25.00"),  # we say 30.00
        (first.pk, "disbursement_fee", "300.00"),  # matches
        (second.pk, "approval_fee", "5.00"),  # we have no such line
        # first's approval fee (5.00) is missing from their file
    ]


def test_a_reconciliation_upload_shows_the_three_lists_and_the_total_difference(
    under_review, lent, finance_user, second_finance_user
):
    client = browser(finance_user)
    response = client.post(
        statement_url(under_review, "reconcile"), {"file": csv_upload(partner_rows(under_review, lent))}
    )
    assert response.status_code == 302
    assert response["Location"] == statement_url(under_review) + "#reconciliation"
    assert messages_of(response) == [("warning", "Reconciliation stored: 3 differences, total difference -5.00.")]

    page = client.get(statement_url(under_review)).content.decode()
    summary = re.search(r'data-testid="reconciliation-summary"[^>]*>', page).group(0)
    assert 'data-differences="3"' in summary
    assert 'data-total-difference="-5.00"' in summary
    assert by_testid(page, "total-difference") == "-5.00"
    assert by_testid(page, "only-ours-count") == "1"
    assert by_testid(page, "only-theirs-count") == "1"
    assert by_testid(page, "amount-differs-count") == "1"
    for name in ("only-ours", "only-theirs", "amount-differs"):
        block = re.search(rf'<div class="reconciliation-list" data-testid="{name}".*?</div>', page, re.S).group(0)
        assert block.count('data-testid="difference"') == 1, name
    assert url("referrals_referral_change", lent[1].pk) in page

    # The differences are now the approver's warning, and approving needs a note.
    second = browser(second_finance_user)
    page = second.get(statement_url(under_review)).content.decode()
    assert "The last reconciliation found 3 differences (total -5.00)." in by_testid(page, "unresolved-differences")
    response = second.post(act_url(under_review, "approve"), {"approve-note": ""})
    assert response.status_code == 200
    assert "Approving needs a note saying why." in str(response.context["actions"][0]["form"].errors["note"])
    under_review.refresh_from_db()
    assert under_review.status == Statement.Status.UNDER_REVIEW
    assert second.post(act_url(under_review, "approve"), {"approve-note": "partner's error"}).status_code == 302
    under_review.refresh_from_db()
    assert under_review.status == Statement.Status.APPROVED


def test_matching_figures_say_so(statement, lent, finance_user):
    rows = [(line.referral_id, line.line_type, line.amount) for line in statement.lines.all()]
    response = browser(finance_user).post(statement_url(statement, "reconcile"), {"file": csv_upload(rows)})
    assert messages_of(response) == [("success", "Reconciliation stored: the figures match.")]
    page = browser(finance_user).get(statement_url(statement)).content.decode()
    assert 'data-testid="reconciliation-match"' in page
    assert by_testid(page, "total-difference") == "0.00"


def test_a_bad_csv_shows_every_row_message_and_stores_nothing(statement, lent, finance_user):
    rows = [
        (lent[0].pk, "application_fee", "30.00"),
        ("not-a-uuid", "application_fee", "30.00"),
        (lent[1].pk, "teleport_fee", "1.234"),
    ]
    response = browser(finance_user).post(statement_url(statement, "reconcile"), {"file": csv_upload(rows)})
    assert response.status_code == 200
    errors = re.search(r'data-testid="reconcile-errors">(.*?)</div>', response.content.decode(), re.S).group(1)
    for message in (
        "row 3: referral_id: not a referral id.",
        "row 4: line_type: unknown line type.",
        "row 4: amount: not an amount in CNY with at most two decimals.",
    ):
        assert message in errors
    assert not Reconciliation.objects.exists()


def test_a_file_with_the_wrong_header_or_none_at_all_is_refused(statement, finance_user):
    client = browser(finance_user)
    response = client.post(statement_url(statement, "reconcile"), {"file": csv_upload([], header="a,b,c")})
    assert "The first row must be exactly: referral_id,line_type,amount." in response.content.decode()
    response = client.post(statement_url(statement, "reconcile"), {})
    assert response.status_code == 200
    assert response.context["reconcile_form"].errors["file"]
    assert not Reconciliation.objects.exists()


# --- the list and the revenue chart ---------------------------------------------------------------
def test_the_statement_list_totals_the_current_filter(statement, finance_user, partner):
    from tests.factories import PartnerFactory

    other = PartnerFactory(code="PARTNER_B")
    Statement.objects.create(
        partner=other, period="2026-10", net=Decimal("100.00"), vat=Decimal("6.00"), gross=Decimal("106.00"),
        computed_by=finance_user, computed_at=statement.computed_at,
    )  # fmt: skip
    client = browser(finance_user)
    page = client.get(url("settlements_statement_changelist")).content.decode()
    assert by_testid(page, "totals-count") == "2"
    assert by_testid(page, "totals-gross") == str(statement.gross + Decimal("106.00"))
    assert 'data-testid="revenue-link"' in page

    page = client.get(url("settlements_statement_changelist") + "?period=2026-10").content.decode()
    assert (by_testid(page, "totals-count"), by_testid(page, "totals-net"), by_testid(page, "totals-vat")) == (
        "1",
        "100.00",
        "6.00",
    )
    page = client.get(url("settlements_statement_changelist") + "?q=partner_a").content.decode()
    assert by_testid(page, "totals-gross") == str(statement.gross)


def test_the_revenue_chart_uses_local_chart_js_and_one_query_of_data(statement, finance_user, partner):
    page = browser(finance_user).get(url("settlements_statement_revenue") + "?end=2026-11").content.decode()
    assert '<script src="/static/vendor/chart.umd.min.js" defer></script>' in page
    assert '<script src="/static/settlements/revenue_chart.js" defer></script>' in page
    assert "cdn" not in page.lower()
    data = json.loads(re.search(r'id="revenue-data" type="application/json">(.*?)</script>', page).group(1))
    assert len(data["labels"]) == 12
    assert data["labels"][0] == "2025-12"
    assert data["labels"][-1] == "2026-11"
    assert data["datasets"] == [{"label": "PARTNER_A", "data": ["0.00"] * 11 + [str(statement.gross)]}]
    assert by_testid(page, "revenue-total") == str(statement.gross)

    billed = browser(finance_user).get(url("settlements_statement_revenue") + "?end=2026-11&scope=billed")
    assert (
        json.loads(
            re.search(r'id="revenue-data" type="application/json">(.*?)</script>', billed.content.decode()).group(1)
        )["datasets"]
        == []
    )  # a draft is not billed


def test_the_vendored_chart_js_and_the_scripts_are_served_as_static_files():
    from django.contrib.staticfiles import finders

    for name in ("vendor/chart.umd.min.js", "vendor/chart.js.LICENSE.txt", "settlements/run_progress.js",
                 "settlements/revenue_chart.js", "settlements/admin.css"):  # fmt: skip
        assert finders.find(name), name
    assert "Chart.js v4" in Path(finders.find("vendor/chart.umd.min.js")).read_text(encoding="utf-8")[:200]


def test_the_pages_speak_chinese(under_review, finance_user, second_finance_user):
    """The screens' own words, the statuses (a statement is 已批准, not a loan's 已授信) and the line types."""
    StatementLine.objects.filter(statement=under_review, line_type=LineType.APPROVAL_FEE).update(late=True)
    client = browser(second_finance_user, language="zh-hans")
    page = client.get(statement_url(under_review)).content.decode()
    for words in ("审核中", "批准", "退回", "争议", "进件费", "授信费", "放款费", "小计", "迟到", "与合作机构数据对账"):
        assert words in page, words
    assert client.post(act_url(under_review, "approve")).status_code == 302
    page = client.get(statement_url(under_review)).content.decode()
    assert by_testid(page, "statement-status") == "已批准"
    assert "PARTNER_A 2026-11 的状态已变更为“已批准”。" in page
    assert "开具" in page
    runs = client.get(url("settlements_settlementrun_add")).content.decode()
    assert "发起结算" in runs
    assert "开始结算" in runs
