"""An operations user's first morning: the first sign-in sets up two-factor (a QR code, the key, one
code to confirm, ten backup codes), then the dashboard's dispatch health, the referral queues, the
referral whose call PARTNER_A refused, its calls and their attempts, a retry — and compliance's
reveal page, closed to them.

No worker runs here: the probes intake hands to one are recorded (``enqueued``) and sent by the
test with the partners' answers stubbed at the HTTP boundary, as a worker would send them."""

from __future__ import annotations

import base64
import re

import responses
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from playwright.sync_api import expect

from referrals.models import Dispatch, Referral
from referrals.services.dispatch import dispatch_send
from tests.factories import make_contract
from tests.journeys.steps import dashboard_shows, refused, screenshot
from tests.referrals import builders
from tests.signin import PASSWORD

ROLE = "operations"


def answer(referral: Referral, *, status: int = 200, decision: str = "accept") -> str:
    """The partner's answer to the referral's probe, as a worker would get it."""
    probe = referral.dispatches.get(kind=Dispatch.Kind.PROBE)
    with responses.RequestsMock() as partner:
        partner.add(
            responses.POST, f"{referral.partner.api_base_url}/probe", json={"decision": decision}, status=status
        )
        return dispatch_send(probe.pk)


def first_code(secret: str) -> str:
    """What the authenticator app shows for the key typed in by hand (RFC 6238, 30 s, 6 digits)."""
    totp = TOTP(base64.b32decode(secret.replace(" ", "")))
    return f"{totp.token():06d}"


def test_an_operations_users_first_morning(
    live_server, page, enqueued, operations_user, partnership_manager, compliance_officer, origination
):
    base = live_server.url
    partner_a, partner_b = builders.partners()
    for partner in (partner_a, partner_b):
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    text = builders.consent_text(actor=compliance_officer)
    refused_one, accepted, waiting = (
        builders.applicant_with_consent(origination=origination, text=text, seq=seq) for seq in (1, 2, 3)
    )
    failed = refused_one.referrals.get(partner=partner_a)
    assert answer(failed, status=400) == "failed"  # PARTNER_A refuses the request: not retried by itself
    assert answer(refused_one.referrals.get(partner=partner_b)) == "succeeded"
    assert answer(accepted.referrals.get(partner=partner_a)) == "succeeded"
    assert answer(accepted.referrals.get(partner=partner_b), decision="decline") == "succeeded"
    probe = failed.dispatches.get(kind=Dispatch.Kind.PROBE)
    enqueued.clear()

    # --- first sign-in: the password, then two-factor set-up ---------------------------------------
    assert not TOTPDevice.objects.filter(user=operations_user).exists()
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", operations_user.username)
    page.fill("#id_password", PASSWORD)
    page.click('#login-form input[type="submit"]')  # no code yet: nothing to take it from
    expect(page).to_have_url(f"{base}/admin/2fa/?next=%2Fadmin%2F")
    expect(page.locator("#qr-code svg")).to_be_visible()
    screenshot(page, ROLE, "enrol")
    page.fill("#id_token", first_code(page.locator("#otp-secret").inner_text()))
    page.click('#enrol-form input[type="submit"]')
    codes = page.locator("#backup-codes li")
    expect(codes).to_have_count(10)
    screenshot(page, ROLE, "backup-codes")
    shown = set(codes.all_inner_texts())
    assert shown == set(StaticToken.objects.filter(device__user=operations_user).values_list("token", flat=True))
    assert TOTPDevice.objects.get(user=operations_user).confirmed

    # --- the dashboard: dispatch health first ---------------------------------------------------
    page.click("#continue")
    expect(page.locator("#user-tools")).to_contain_text(operations_user.username)
    dashboard_shows(page, {"dispatch-health", "funnel", "referrals-per-day", "reclaims"})
    health = page.get_by_test_id("panel-dispatch-health").locator('tr[data-partner="PARTNER_A"]')
    expect(health.locator('[data-field="attempts"]')).to_have_text("2")
    expect(health.locator('[data-field="error_rate"]')).to_have_text("50.0%")
    screenshot(page, ROLE, "dashboard")

    # --- the queues: PARTNER_A has one failed referral ----------------------------------------
    page.click('#content-main a[href="/admin/referrals/referral/"]')
    failed_cell = page.locator('tr.queue-row[data-partner="PARTNER_A"] td[data-status="failed"]')
    expect(failed_cell).to_have_attribute("data-count", "1")
    screenshot(page, ROLE, "queues")
    failed_cell.locator("a").click()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    rows.first.locator("th a").click()

    # --- the referral: the refused call, its attempt, and the retry ------------------------------
    expect(page).to_have_url(re.compile(rf"/admin/referrals/referral/{failed.pk}/change/"))
    expect(page.locator(".spillway-attempts tbody tr")).to_have_count(1)
    expect(page.locator(".spillway-attempts")).to_contain_text("400")
    expect(page.locator("#content-main")).not_to_contain_text(refused_one.name)  # masked
    screenshot(page, ROLE, "failed-referral")
    page.click("a.operation-retry")
    page.click('#operation_form input[name="_confirm"]')
    expect(page.locator(".messagelist .success")).to_contain_text("排队中")
    expect(page.locator("a.operation-retry")).to_have_count(0)  # queued again: nothing to retry
    screenshot(page, ROLE, "retried")
    assert Referral.objects.get(pk=failed.pk).status == Referral.Status.QUEUED
    assert Dispatch.objects.get(pk=probe.pk).status == Dispatch.Status.PENDING
    assert enqueued == [probe.pk]  # handed to a worker, same call, same idempotency key

    # --- outside the role: compliance's reveal page ----------------------------------------------
    refused(page, f"{base}/admin/referrals/applicant/{waiting.pk}/reveal/")
