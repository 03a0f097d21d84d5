"""A compliance officer's morning: sign in with a one-time code, glance at the dashboard, find the
applicant a complaint is about by phone, check the consent's ledger timeline, reveal the phone
number with the complaint's reference as the reason, export the evidence bundle for the regulator
— and find the finance screens closed."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from referrals.models import ConsentEvent
from referrals.services.ledger import ledger_checkpoint
from tests.factories import make_contract
from tests.journeys.steps import dashboard_shows, refused, screenshot
from tests.referrals import builders
from tests.signin import sign_in

ROLE = "compliance"
REASON = "投诉 #2026-118：申请人称未授权，回电核实"


def test_a_compliance_officers_morning(
    live_server, page, tmp_path, worker, compliance_officer, partnership_manager, origination
):
    base = live_server.url
    for partner in builders.partners():
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    text = builders.consent_text(actor=compliance_officer)
    applicant = builders.applicant_with_consent(origination=origination, text=text, seq=7)
    builders.applicant_with_consent(origination=origination, text=text, seq=8)  # not the one asked about
    ledger_checkpoint()  # the nightly seal: the bundle carries a checkpoint and inclusion proofs
    consent = applicant.consents.get()
    clear_phone = builders.phone(7)

    # --- sign in (password and one-time code), the dashboard -------------------------------------
    sign_in(page, base, compliance_officer)
    dashboard_shows(page, {"dispatch-health", "funnel", "referrals-per-day", "consents", "reclaims"})
    expect(page.get_by_test_id("panel-consents").locator('[data-field="granted"]')).to_have_text("2")
    funnel = page.get_by_test_id("panel-funnel")
    expect(funnel.locator('tr[data-partner="PARTNER_A"] [data-field="referred"]')).to_have_text("2")
    screenshot(page, ROLE, "dashboard")

    # --- the applicant, by the phone number the complaint gives: one row, masked -----------------
    page.click('#content-main a[href="/admin/referrals/applicant/"]')
    page.fill("#searchbar", clear_phone)
    page.press("#searchbar", "Enter")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(applicant.phone_masked)
    assert clear_phone not in page.locator("#content-main").inner_text()
    screenshot(page, ROLE, "search")
    rows.first.locator(f'a:text("{applicant.external_id}")').click()

    # --- the consent's timeline: the chain verified, every event with its hashes -----------------
    page.click("a.consent-link")
    expect(page.locator('[data-ledger="verified"]')).to_be_visible()
    expect(page.locator("table.ledger-timeline tbody tr.ledger-event")).to_have_count(1)
    expect(page.locator("tr.ledger-event-granted")).to_be_visible()
    screenshot(page, ROLE, "consent")
    page.go_back()

    # --- reveal the phone number, with the complaint as the reason --------------------------------
    page.click("a.action-reveal")
    page.check('#reveal_form input[name="show"][value="phone"]')
    page.fill("#id_reason", REASON)
    page.click('#reveal_form input[name="_reveal"]')
    expect(page.locator("#revealed")).to_contain_text(clear_phone)
    screenshot(page, ROLE, "reveal")
    [reveal] = ConsentEvent.objects.filter(consent=consent, type=ConsentEvent.Type.PII_REVEALED)
    assert (reveal.payload["reason"], reveal.payload["fields"]) == (REASON, ["phone"]), reveal.payload

    # --- export the evidence bundle (a background job): the reveal is in it, the phone is not -------
    page.click("#revealed ~ p a.button")  # back to the applicant
    page.click("a.action-export")
    page.click('#export_form input[type="submit"]')
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "done", timeout=30_000)
    expect(page.get_by_test_id("job-exported")).to_have_attribute("data-count", "1")
    screenshot(page, ROLE, "export")
    with page.expect_download() as download_info:
        page.get_by_test_id("job-download").click()
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    assert saved.name == f"evidence-{applicant.external_id}.json"
    [exported] = json.loads(saved.read_text(encoding="utf-8"))["consents"]
    granted = consent.events.get(type=ConsentEvent.Type.GRANTED)
    assert [event["hash"] for event in exported["events"]] == [granted.hash, reveal.hash]
    assert [event["checkpoint"] is not None for event in exported["events"]] == [True, False]  # sealed tonight
    assert clear_phone not in saved.read_text(encoding="utf-8")
    assert ConsentEvent.objects.filter(consent=consent, type=ConsentEvent.Type.EVIDENCE_EXPORTED).count() == 1

    # --- outside the role: finance's settlement runs -------------------------------------------
    refused(page, f"{base}/admin/settlements/settlementrun/add/")
