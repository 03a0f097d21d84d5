"""A compliance officer's journey in a real browser (Playwright with Debian's Chromium): log in,
find an applicant by phone, read the consent's ledger timeline, export the evidence bundle (made
by a background job, downloaded from its page)."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from playwright.sync_api import expect

from referrals.models import ConsentEvent
from referrals.services.consents import applicant_reveal
from referrals.services.ledger import ledger_checkpoint
from tests.factories import UserFactory
from tests.referrals import builders
from tests.signin import authenticator, current_code

PASSWORD = "Hegui-2026-steady"
# Written under var/ (not tracked) on every run; `make screenshots` copies them into docs/screenshots/.
SCREENSHOT = Path(settings.VAR_DIR) / "screenshots" / "compliance-timeline.png"


def test_compliance_officer_finds_an_applicant_by_phone_checks_the_timeline_and_exports_evidence(
    live_server, page, tmp_path, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the export job runs when its request commits
    officer = UserFactory(username="hewei", roles=["compliance_officer"], password=PASSWORD)
    origination = UserFactory(username="origination", roles=["origination"], is_staff=False)
    builders.partners()
    text = builders.consent_text(actor=officer)
    applicant = builders.applicant_with_consent(origination=origination, text=text, seq=7)
    builders.applicant_with_consent(origination=origination, text=text, seq=8)  # not to be found
    consent = applicant.consents.get()
    applicant_reveal(actor=officer, applicant=applicant, fields=["phone"], reason="投诉 #2026-118：回电核实")
    ledger_checkpoint()  # seal the grant, so the bundle carries a checkpoint and an inclusion proof
    sealed = list(consent.events.order_by("seq"))
    granted = sealed[0]
    clear_phone = builders.phone(7)

    # Log in through the admin's own form, served in Chinese.
    page.set_viewport_size({"width": 1440, "height": 1000})
    page.goto(f"{live_server.url}/admin/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    page.fill("#id_username", officer.username)
    page.fill("#id_password", PASSWORD)
    page.fill("#id_otp_token", current_code(authenticator(officer)))
    page.click('#login-form input[type="submit"]')
    expect(page.locator("#user-tools")).to_contain_text(officer.username)

    # Applicants → type the phone number in clear → exactly one row, masked.
    page.click('a[href="/admin/referrals/applicant/"]')
    page.fill("#searchbar", clear_phone)
    page.press("#searchbar", "Enter")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(applicant.phone_masked)
    expect(rows.first).to_contain_text(applicant.name_masked)

    # The applicant: masked everywhere on the page.
    rows.first.locator(f'a:text("{applicant.external_id}")').click()
    expect(page.locator("#content-main")).to_contain_text(applicant.national_id_masked)
    assert clear_phone not in page.locator("#content-main").inner_text()

    # The consent and its timeline: the badge, each event with its hashes.
    page.click("a.consent-link")
    expect(page.locator('[data-ledger="verified"]')).to_be_visible()
    expect(page.locator(".consent-text-body")).to_contain_text("个人信息单独同意书")
    expect(page.locator(f'tr.ledger-event-granted code.ledger-hash[title="{granted.hash}"]')).to_be_visible()
    # The chain: the reveal's previous hash is the grant's hash.
    expect(page.locator(f'tr.ledger-event-pii_revealed code.ledger-hash[title="{granted.hash}"]')).to_be_visible()
    expect(page.locator("table.ledger-timeline tbody tr.ledger-event")).to_have_count(consent.events.count())
    page.locator("#ledger-timeline").scroll_into_view_if_needed()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Back to the applicant → Export evidence → its job's page → the JSON download.
    page.go_back()
    page.click("a.action-export")
    page.click('#export_form input[type="submit"]')
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "done")
    with page.expect_download() as download_info:
        page.get_by_test_id("job-download").click()
    download = download_info.value
    assert download.suggested_filename == f"evidence-{applicant.external_id}.json"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    bundle = json.loads(saved.read_text(encoding="utf-8"))

    [exported] = bundle["consents"]
    assert exported["id"] == str(consent.pk)
    assert [e["hash"] for e in exported["events"]] == [e.hash for e in sealed]
    assert {e["checkpoint"] for e in exported["events"]} == {bundle["checkpoints"][0]["checkpoint"]}
    assert bundle["checkpoints"][0]["root"]
    assert clear_phone not in saved.read_text(encoding="utf-8")
    assert ConsentEvent.objects.filter(consent=consent, type=ConsentEvent.Type.EVIDENCE_EXPORTED).count() == 1
