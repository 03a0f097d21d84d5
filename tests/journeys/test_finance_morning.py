"""A finance user's month-end morning: sign in with a one-time code, the dashboard, start November's
settlement run and follow it to the end, open PARTNER_A's statement and submit it; a second finance
user approves it (four-eyes); operations' dispatch screens stay closed; and the dashboard's
revenue panel shows the month.

No Celery worker here: the run executes in a thread of this process (the ``worker`` fixture)."""

from __future__ import annotations

from playwright.sync_api import expect

from config import dashboard
from settlements.models import Statement
from tests.factories import PartnerFactory, UserFactory, consent_text, make_contract
from tests.journeys.steps import dashboard_shows, refused, screenshot
from tests.settlements.builders import PartnerSide, at, submitting
from tests.signin import sign_in

ROLE = "finance"
PERIOD = "2026-11"
# Accepted applications in November: 30.00 each (the default contract), plus 6% VAT.
ACCEPTED = {"PARTNER_A": 3, "PARTNER_B": 2}
GROSS_A = "95.40"  # 3 × 30.00 = 90.00 net, 5.40 VAT
REVENUE = "159.00"  # and PARTNER_B's 2 × 30.00 × 1.06 = 63.60


def test_a_finance_users_month_end_morning(
    live_server, page, new_context, api, client, worker,
    finance_user, partnership_manager, compliance_officer, origination,
):  # fmt: skip
    base = live_server.url
    second = UserFactory(username="finance2", roles=["finance"])
    text = consent_text(actor=compliance_officer)
    for code, name in (("PARTNER_A", "甲消费金融有限公司"), ("PARTNER_B", "乙银行股份有限公司")):
        partner = PartnerFactory(code=code, name=name)
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
        side = PartnerSide(client, partner)
        for day, referral in enumerate(submitting(api(origination), text, partner, ACCEPTED[code]), start=2):
            side.accepted(referral, at(day, 10))

    # --- sign in, the dashboard: revenue, not the partners' calls nor the reclaim queue ---------
    sign_in(page, base, finance_user)
    dashboard_shows(page, {"funnel", "referrals-per-day", "revenue"})
    expect(page.get_by_test_id("panel-revenue").locator(f'[data-period="{PERIOD}"]')).to_have_text("0.00")

    # --- November's run: start it, follow it to the end ---------------------------------------
    page.click('#content-main a[href="/admin/settlements/settlementrun/"]')
    page.get_by_test_id("run-add").click()
    page.get_by_test_id("run-period").fill(PERIOD)
    page.get_by_test_id("run-start").click()
    expect(page.get_by_test_id("run-progress")).to_be_visible()
    expect(page.get_by_test_id("run-status")).to_have_attribute("data-status", "done", timeout=30_000)
    expect(page.get_by_test_id("run-progress-text")).to_have_text("100%")
    expect(page.get_by_test_id("run-statements").locator("li[data-partner]")).to_have_count(2)
    screenshot(page, ROLE, "run")

    # --- PARTNER_A's statement: check it, submit it ---------------------------------------------
    page.locator('li[data-partner="PARTNER_A"]').get_by_test_id("run-statement-link").click()
    status = page.get_by_test_id("statement-status")
    expect(status).to_have_attribute("data-status", "draft")
    expect(page.get_by_test_id("statement-gross")).to_have_text(GROSS_A)
    group = page.locator('[data-testid="line-group"][data-line-type="application_fee"]')
    expect(group).to_have_attribute("data-count", str(ACCEPTED["PARTNER_A"]))
    page.get_by_test_id("submit").click()
    expect(status).to_have_attribute("data-status", "under_review")
    expect(page.get_by_test_id("four-eyes-hint")).to_be_visible()  # someone else approves
    screenshot(page, ROLE, "submitted")
    statement = Statement.objects.get(partner__code="PARTNER_A", period=PERIOD)

    # --- outside the role: operations' dispatches ----------------------------------------------
    refused(page, f"{base}/admin/referrals/dispatch/")

    # --- four-eyes: finance2 approves, with a note --------------------------------------------
    reviewer = new_context().new_page()
    sign_in(reviewer, base, second)
    reviewer.goto(f"{base}/admin/settlements/statement/{statement.pk}/change/")
    reviewer.get_by_test_id("approve-note").fill("三笔进件费与合作机构回调一致，同意")
    reviewer.get_by_test_id("approve").click()
    expect(reviewer.get_by_test_id("statement-status")).to_have_attribute("data-status", "approved")
    screenshot(reviewer, ROLE, "four-eyes")
    statement.refresh_from_db()
    assert (statement.status, statement.submitted_by, statement.approved_by) == (
        Statement.Status.APPROVED, finance_user, second,
    )  # fmt: skip

    # --- back on the dashboard (its panels are cached a minute): November's revenue ------------
    dashboard.clear()  # the minute has passed
    page.goto(f"{base}/admin/")
    dashboard_shows(page, {"funnel", "referrals-per-day", "revenue"})
    expect(page.get_by_test_id("panel-revenue").locator(f'[data-period="{PERIOD}"]')).to_have_text(REVENUE)
    screenshot(page, ROLE, "dashboard")
