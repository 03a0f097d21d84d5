"""Finance's month-end journey in a real browser (Playwright with Debian's Chromium): start the
November run, watch its progress bar move while the partners are settled one by one, open
PARTNER_A's statement (the worked example, 346.27), submit it, reconcile it with the partner's own
CSV (a bad file first), see the differences, and have a second finance user approve it (four-eyes:
the runner may not)."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from playwright.sync_api import Page, expect

from settlements.models import Reconciliation, SettlementRun, Statement
from settlements.services import runs
from tests.factories import PartnerFactory, make_contract
from tests.settlements.builders import PartnerSide, at, submitting
from tests.signin import sign_in

PERIOD = "2026-11"
PER_PARTNER_DELAY = 0.7  # seconds: long enough for the page to show progress between partners
# Written under var/ (not tracked) on every run; `make screenshots` copies them into docs/screenshots/.
SCREENSHOTS = Path(settings.VAR_DIR) / "screenshots"


# --- the month's data -----------------------------------------------------------------------------
@pytest.fixture
def november(contract, origination_api, text, partner, side):
    """settlement-rules.md's worked example for PARTNER_A (as in test_worked_example.py)."""
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


@pytest.fixture
def other_partners(client, origination_api, text, partnership_manager, compliance_officer):
    """Two more partners with two accepted referrals each, so the run has several to go through."""
    made = []
    for code, name in (("PARTNER_B", "乙银行股份有限公司"), ("PARTNER_C", "丙小额贷款有限公司")):
        other = PartnerFactory(code=code, name=name)
        make_contract(other, drafter=partnership_manager, approver=compliance_officer)
        other_side = PartnerSide(client, other)
        for day, referral in enumerate(submitting(origination_api, text, other, 2), start=6):
            other_side.accepted(referral, at(day, 10))
        made.append(other)
    return made


# --- the run in a background thread, slowed down ------------------------------------------------
@pytest.fixture
def background_runs(live_server, monkeypatch):
    """Runs execute in a thread of this process (no Celery worker here), each partner ~0.7 s slower,
    so the page can show the bar between 0 and 100 %. The threads are joined before the database
    is emptied; an exception in one fails the test."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    real_compute = runs.statement_compute

    def slow_compute(**kwargs):
        time.sleep(PER_PARTNER_DELAY)
        return real_compute(**kwargs)

    def execute(run_id):
        try:
            runs.run_execute(run_id)
        except BaseException as exc:  # reported by the test, not by threading's excepthook
            errors.append(exc)
        finally:
            connections.close_all()

    def enqueue(run_id):
        thread = threading.Thread(target=execute, args=(run_id,), name=f"settlement-run-{run_id}", daemon=True)
        threads.append(thread)
        thread.start()

    monkeypatch.setattr(runs, "statement_compute", slow_compute)
    monkeypatch.setattr(runs, "_enqueue", enqueue)
    yield threads, errors
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a settlement run did not finish"
    assert not errors, errors


# --- helpers --------------------------------------------------------------------------------------
def log_in(page: Page, base: str, username: str) -> None:
    """The admin's own login form, served in Chinese, with password and one-time code (tests.signin)."""
    page.set_viewport_size({"width": 1440, "height": 1000})
    sign_in(page, base, User.objects.get(username=username))
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def partner_csv(tmp_path: Path, name: str, rows: list[tuple]) -> Path:
    path = tmp_path / name
    body = "\n".join(["referral_id,line_type,amount", *(",".join(str(cell) for cell in row) for row in rows)])
    path.write_text(body + "\n", encoding="utf-8")
    return path


def test_finance_runs_the_month_watches_it_reconciles_a_statement_and_a_second_person_approves(
    live_server,
    page,
    new_context,
    tmp_path,
    finance_user,
    second_finance_user,
    november,
    other_partners,
    background_runs,
):
    r1, r2, r3, r4 = november
    base = live_server.url

    # --- start the run from the runs list, and watch it ----------------------------------------
    log_in(page, base, finance_user.username)
    page.goto(f"{base}/admin/settlements/settlementrun/")
    page.get_by_test_id("run-add").click()
    expect(page).to_have_url(f"{base}/admin/settlements/settlementrun/add/")
    page.get_by_test_id("run-period").fill(PERIOD)
    page.get_by_test_id("run-start").click()
    expect(page.get_by_test_id("run-progress")).to_be_visible()
    # (Ids from the page, not the database: the run's thread is writing to it.)
    run_id = page.get_by_test_id("run").get_attribute("data-run-id")
    expect(page).to_have_url(f"{base}/admin/settlements/settlementrun/{run_id}/change/")

    # Sample the bar (the script moves it every half second) until the run says it is done.
    progress, status = page.get_by_test_id("run-progress"), page.get_by_test_id("run-status")
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        value = int(float(progress.get_attribute("value")))
        text = page.get_by_test_id("run-progress-text").inner_text()
        if not seen or seen[-1] != (value, text):
            seen.append((value, text))
            if 0 < value < 100 and not any(0 < v < 100 for v, _t in seen[:-1]):
                screenshot(page, "finance-run-progress.png")  # the first time the bar is part-way
        if status.get_attribute("data-status") == "done":
            break
        page.wait_for_timeout(50)
    assert any(0 < value < 100 and text == f"{value}%" for value, text in seen), seen
    expect(status).to_have_attribute("data-status", "done")
    expect(progress).to_have_attribute("value", "100")
    expect(page.get_by_test_id("run-progress-text")).to_have_text("100%")
    links = page.get_by_test_id("run-statements").get_by_test_id("run-statement-link")
    expect(links).to_have_count(3)
    expect(page.get_by_test_id("run-statements").locator("li[data-partner]")).to_have_count(3)

    # --- PARTNER_A's statement: the worked example ----------------------------------------------
    assert SettlementRun.objects.get(pk=run_id).status == SettlementRun.Status.DONE
    item = page.locator('li[data-partner="PARTNER_A"]')
    statement = Statement.objects.get(pk=item.get_attribute("data-statement"))
    assert (statement.partner.code, statement.period) == ("PARTNER_A", PERIOD)
    item.get_by_test_id("run-statement-link").click()
    expect(page).to_have_url(f"{base}/admin/settlements/statement/{statement.pk}/change/")
    expect(page.get_by_test_id("statement-status")).to_have_attribute("data-status", "draft")
    expect(page.get_by_test_id("statement-gross")).to_have_text("346.27")
    groups = {
        "application_fee": 4, "approval_fee": 2, "disbursement_fee": 2, "interest_share": 1,
        "clawback_returned": 1, "clawback_fpd": 1,
    }  # fmt: skip
    expect(page.get_by_test_id("line-group")).to_have_count(len(groups))
    for line_type, count in groups.items():
        group = page.locator(f'[data-testid="line-group"][data-line-type="{line_type}"]')
        expect(group).to_have_attribute("data-count", str(count))
        expect(group.locator("tbody tr")).to_have_count(count)

    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("statement-status")).to_have_attribute("data-status", "under_review")

    # --- a bad partner file: refused with the row's message, nothing stored ---------------------
    bad = partner_csv(
        tmp_path, "partner-a-bad.csv", [(r1.pk, "application_fee", "30.00"), (r2.pk, "application_fee", "abc")]
    )
    page.get_by_test_id("reconcile-file").set_input_files(bad)
    page.get_by_test_id("reconcile-submit").click()
    expect(page.get_by_test_id("reconcile-errors")).to_contain_text("第 3 行")
    expect(page.get_by_test_id("reconcile-errors")).to_contain_text("amount")
    expect(page.get_by_test_id("reconciliation-summary")).to_have_count(0)
    assert not Reconciliation.objects.exists()

    # --- the partner's figures: one line missing, one extra, one amount differs -----------------
    ours = [
        (r1, "application_fee", "30.00"), (r2, "application_fee", "30.00"), (r3, "application_fee", "25.00"),
        (r4, "application_fee", "25.00"), (r2, "clawback_returned", "-30.00"), (r1, "approval_fee", "5.00"),
        (r3, "approval_fee", "5.00"), (r1, "disbursement_fee", "200.00"), (r3, "disbursement_fee", "83.33"),
        (r1, "interest_share", "41.67"), (r3, "clawback_fpd", "-88.33"),
    ]  # fmt: skip
    theirs = [row for row in ours if row[:2] != (r4, "application_fee")]  # they miss R4's application fee
    theirs = [(r, t, "180.00" if (r, t) == (r1, "disbursement_fee") else a) for r, t, a in theirs]  # 200 → 180
    theirs.append((r2, "approval_fee", "5.00"))  # a fee we do not charge (R2 was returned, never approved)
    expected_difference = sum(Decimal(a) for _r, _t, a in theirs) - sum(Decimal(a) for _r, _t, a in ours)
    assert expected_difference == Decimal("-40.00")  # -25.00 (only ours) + 5.00 (only theirs) - 20.00
    good = partner_csv(tmp_path, "partner-a-2026-11.csv", [(r.pk, t, a) for r, t, a in theirs])
    page.get_by_test_id("reconcile-file").set_input_files(good)
    page.get_by_test_id("reconcile-submit").click()
    summary = page.get_by_test_id("reconciliation-summary")
    expect(summary).to_be_visible()
    expect(summary).to_have_attribute("data-differences", "3")
    expect(page.get_by_test_id("total-difference")).to_have_text(f"{expected_difference:.2f}")
    for name in ("only-ours", "only-theirs", "amount-differs"):
        expect(page.get_by_test_id(f"{name}-count")).to_have_text("1")
        expect(page.get_by_test_id(name).get_by_test_id("difference")).to_have_count(1)
    expect(page.get_by_test_id("only-ours").get_by_test_id("difference")).to_contain_text(str(r4.pk)[:8])
    expect(page.get_by_test_id("only-ours").get_by_test_id("difference")).to_contain_text("-25.00")
    expect(page.get_by_test_id("only-theirs").get_by_test_id("difference")).to_contain_text(str(r2.pk)[:8])
    expect(page.get_by_test_id("only-theirs").get_by_test_id("difference")).to_contain_text("5.00")
    expect(page.get_by_test_id("amount-differs").get_by_test_id("difference")).to_contain_text(str(r1.pk)[:8])
    expect(page.get_by_test_id("amount-differs").get_by_test_id("difference")).to_contain_text("-20.00")
    page.evaluate("window.scrollTo(0, 0)")  # the redirect jumps to #reconciliation; a full page shot from the top
    screenshot(page, "finance-reconciliation.png")

    # --- four-eyes: the runner (and submitter) may not approve ---------------------------------
    expect(page.get_by_test_id("four-eyes-hint")).to_be_visible()
    page.get_by_test_id("approve-note").fill("我已核对")
    page.get_by_test_id("approve").click()
    expect(page.locator(".messagelist .error")).to_contain_text("双人复核")  # the four-eyes refusal
    expect(page.get_by_test_id("statement-status")).to_have_attribute("data-status", "under_review")
    statement.refresh_from_db()
    assert statement.status == Statement.Status.UNDER_REVIEW

    # --- the second finance user approves, with a note ----------------------------------------
    reviewer = new_context().new_page()
    log_in(reviewer, base, second_finance_user.username)
    reviewer.goto(f"{base}/admin/settlements/statement/{statement.pk}/change/")
    expect(reviewer.get_by_test_id("statement-status")).to_have_attribute("data-status", "under_review")
    expect(reviewer.get_by_test_id("unresolved-differences")).to_contain_text(f"{expected_difference:.2f}")
    expect(reviewer.get_by_test_id("four-eyes-hint")).to_have_count(0)
    reviewer.get_by_test_id("approve").click()  # no note: refused, the note is asked for
    expect(reviewer.locator("#action-approve .errorlist")).to_be_visible()
    expect(reviewer.get_by_test_id("statement-status")).to_have_attribute("data-status", "under_review")
    reviewer.get_by_test_id("approve-note").fill("乙方漏记 R4 申请费、误记 R2 审批费、放款费按 180 计：以我方为准")
    reviewer.get_by_test_id("approve").click()
    expect(reviewer.get_by_test_id("statement-status")).to_have_attribute("data-status", "approved")
    expect(reviewer.locator(".messagelist .success")).to_be_visible()
    screenshot(reviewer, "finance-approved.png")

    statement.refresh_from_db()
    assert statement.status == Statement.Status.APPROVED
    assert (statement.approved_by, statement.submitted_by) == (second_finance_user, finance_user)
    assert statement.approval_note.startswith("乙方漏记")
