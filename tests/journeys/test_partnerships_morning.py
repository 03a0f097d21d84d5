"""A partnership manager's morning: sign in with a one-time code, read the funnel on the dashboard,
lower PARTNER_A's application fee in the December draft, check the difference from the version in
force, submit it — find that approving it is not theirs to do, even by a request the page does not
offer — and see it in force once a compliance officer has approved it."""

from __future__ import annotations

import datetime
import json

from playwright.sync_api import expect

from partners.models import Contract
from tests.factories import PartnerFactory, consent_text, contract_terms, intake_payload, make_contract
from tests.journeys.steps import dashboard_shows, refused, refused_post, screenshot
from tests.signin import sign_in

ROLE = "partnerships"
DEC_1 = datetime.date(2026, 12, 1)


def test_a_partnership_managers_morning(
    live_server, page, new_context, api, partnership_manager, compliance_officer, origination
):
    base = live_server.url
    partner = PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司")
    in_force = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    draft = make_contract(partner, drafter=partnership_manager, effective_from=DEC_1)  # yesterday's draft
    text = consent_text(actor=compliance_officer)
    for seq in (1, 2):  # this month's referrals, for the funnel
        body = intake_payload(text=text, partners=[partner.code], seq=seq)
        assert api(origination).post("/api/v1/applicants/", body, format="json").status_code == 201

    # --- sign in, the dashboard: the funnel, not the money nor the partners' calls ---------------
    sign_in(page, base, partnership_manager)
    dashboard_shows(page, {"funnel", "referrals-per-day", "reclaims"})
    funnel = page.get_by_test_id("panel-funnel").locator('tr[data-partner="PARTNER_A"]')
    expect(funnel.locator('[data-field="referred"]')).to_have_text("2")
    screenshot(page, ROLE, "dashboard")

    # --- the draft: application fee 30.00 → 28.00 -----------------------------------------------
    page.click('#content-main a[href="/admin/partners/contract/"]')
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    rows.filter(has_text="草稿").locator("th a").click()
    expect(page).to_have_url(f"{base}/admin/partners/contract/{draft.pk}/change/")
    fees = {**contract_terms()["fees"], "application_fee": "28.00"}
    page.fill("#id_fees", json.dumps(fees))
    page.click('input[name="_continue"]')
    expect(page.locator(".messagelist .success")).to_be_visible()
    changed = page.locator('table.spillway-terms-diff tr[data-term="fees.application_fee"]')
    expect(changed.locator("td").nth(1)).to_have_text("30.00")  # v1, in force
    expect(changed.locator("td").nth(2)).to_have_text("28.00")  # this draft
    screenshot(page, ROLE, "draft")

    # --- submit it for approval ---------------------------------------------------------------
    page.click("a.transition-submit")
    expect(page.locator('table.spillway-terms-diff tr[data-term="fees.application_fee"]')).to_be_visible()
    page.click('#transition_form input[name="_confirm"]')
    expect(page.locator(".messagelist .success")).to_contain_text("待审批")
    expect(page.locator("a.transition-approve")).to_have_count(0)  # compliance's button, not shown here
    screenshot(page, ROLE, "submitted")

    # --- outside the role: approving (a POST no page offers them) and finance's statements ---------
    refused_post(page, f"{base}/admin/partners/contract/{draft.pk}/transition/approve/", {"_confirm": "1"})
    assert Contract.objects.get(pk=draft.pk).status == Contract.Status.PENDING_APPROVAL
    refused(page, f"{base}/admin/settlements/statement/")

    # --- a compliance officer approves; back on the list, v2 is in force ---------------------------
    officer = new_context().new_page()
    sign_in(officer, base, compliance_officer)
    officer.goto(f"{base}/admin/partners/contract/{draft.pk}/change/")
    officer.click("a.transition-approve")
    officer.click('#transition_form input[name="_confirm"]')
    expect(officer.locator(".messagelist .success")).to_be_visible()

    page.goto(f"{base}/admin/partners/contract/")
    expect(rows.filter(has_text="生效中").locator("td.field-version")).to_have_text("2")
    superseded = rows.filter(has_text="已被取代")
    expect(superseded.locator("td.field-version")).to_have_text("1")
    expect(superseded.locator("td.field-effective_to")).to_have_text("2026年11月30日")  # the day before v2
    screenshot(page, ROLE, "in-force")
    in_force.refresh_from_db()
    assert (in_force.status, in_force.effective_to) == (Contract.Status.SUPERSEDED, DEC_1 - datetime.timedelta(1))
    assert Contract.objects.get(pk=draft.pk).fees["application_fee"] == "28.00"
