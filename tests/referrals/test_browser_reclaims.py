"""A compliance officer's reclaim review in a real browser (Playwright with Debian's Chromium): open
the review queue, open the oldest case, read the evidence and every rule checked again, approve it
with a reason, and watch the case move to ``notified`` while the partner (the project's simulator,
over real HTTP) holds its answer, then to ``reclaimed`` once it acknowledges the notice.

There is no Celery worker here: the approval's notice is sent by a thread of this process, the way
a worker would (``dispatch_send``), a moment after the approval commits."""

from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client
from playwright.sync_api import Page, expect

from partners.models import Partner
from partners.simulator import CredentialStore, PartnerSimulator, SimulatorConfig
from referrals.models import ConsentEvent, Dispatch, Loan, Reclaim
from referrals.services import dispatch as outbox
from referrals.services.reclaims import reclaim_propose, reclaims_scan
from tests.factories import PartnerFactory, make_contract
from tests.settlements.builders import PartnerSide, at, submitting
from tests.signin import sign_in

RECLAIM_TERMS = {"allowed": True, "min_ontime_installments": 3, "fee": "200.00", "non_solicit_days": 0}
RULE_CODES = ["contract_allows", "loan_open", "ontime_installments", "no_overdue", "non_solicit_elapsed", "consent"]
SEND_DELAY = 1.5  # seconds between the approval and the send: the page shows "approved" first
PARTNER_LATENCY_MS = 2000  # the partner holds its answer: the case stays "notified" meanwhile
PARTNER_TIMEOUT_MS = 8000  # well above the latency
# Written under var/ (not tracked) on every run; `make screenshots` copies them into docs/screenshots/.
SCREENSHOTS = Path(settings.VAR_DIR) / "screenshots"


# --- data -----------------------------------------------------------------------------------------
def lend(origination_api, text, partner, side, loan_id: str, *, ontime: int = 3) -> Loan:
    """Accepted in early November, disbursed, ``ontime`` instalments paid the day before they fell due."""
    [referral] = submitting(origination_api, text, partner, 1)
    side.accepted(referral, at(2, 9))
    side.approved(referral, at(3, 10), loan_id)
    side.disbursed(referral, at(4, 10), loan_id, "12000.00")
    for number in range(1, ontime + 1):
        due = datetime.date(2026, 11, 10 + number)
        side.repaid(referral, at(9 + number, 15), loan_id, number, "90.00", due=due, paid=due - datetime.timedelta(1))
    return Loan.objects.get(partner=partner, loan_id=loan_id)


@pytest.fixture
def partner(db):
    return PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司")


@pytest.fixture
def queue(partner, partnership_manager, compliance_officer, operations_user, origination_api, text):
    """Two candidates found by the scan (operations proposed the older one) and one near miss."""
    make_contract(partner, drafter=partnership_manager, approver=compliance_officer, reclaim=RECLAIM_TERMS)
    side = PartnerSide(Client(), partner)
    first = lend(origination_api, text, partner, side, "LN-7001")
    second = lend(origination_api, text, partner, side, "LN-7002")
    lend(origination_api, text, partner, side, "LN-7003", ontime=2)
    result = reclaims_scan()
    assert (result.candidates, result.near_misses) == (2, 1), result
    proposed = reclaim_propose(
        actor=operations_user, reclaim=Reclaim.objects.get(loan=first), note="三期均提前还款，建议回捞"
    )
    return proposed, Reclaim.objects.get(loan=second)


@pytest.fixture
def simulator(queue):
    """The partner simulator on a free port, answering after ``PARTNER_LATENCY_MS``; PARTNER_A
    pointed at it (after the referrals were made, so only the reclaim notice goes there)."""
    sim = PartnerSimulator(
        SimulatorConfig(seed=20261129, latency_ms=PARTNER_LATENCY_MS),
        port=0,
        credentials=CredentialStore(refresh_seconds=3600, min_reload_seconds=3600),
    )
    sim.bind()
    for partner in Partner.objects.all():
        Partner.objects.filter(pk=partner.pk).update(
            api_base_url=f"{sim.url}/{partner.code.lower()}", timeout_ms=PARTNER_TIMEOUT_MS
        )
    sim.credentials.reload()
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def background_sends(monkeypatch):
    """What a worker would do with the ids enqueued on commit, in a thread of this process, after
    ``SEND_DELAY``. The threads are joined before the database is emptied; an exception in one
    fails the test."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    outcomes: list[str] = []

    def send(ids: list[int]) -> None:
        try:
            time.sleep(SEND_DELAY)
            for dispatch_id in ids:
                outcomes.append(outbox.dispatch_send(dispatch_id))
        except BaseException as exc:  # reported by the test, not by threading's excepthook
            errors.append(exc)
        finally:
            connections.close_all()

    def enqueue(ids: list[int]) -> None:
        thread = threading.Thread(target=send, args=(list(ids),), name="reclaim-notice", daemon=True)
        threads.append(thread)
        thread.start()

    monkeypatch.setattr(outbox, "_enqueue", enqueue)
    yield outcomes
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a notice send did not finish"
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


def watch_status(page: Page, until: str, timeout: float = 30) -> list[str]:
    """Reload the case page until its status is ``until``; the distinct statuses seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.reload()
        status = page.get_by_test_id("reclaim-status").get_attribute("data-status")
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == until:
            break
        page.wait_for_timeout(200)
    return seen


# PostgreSQL only: here the live server reads the outbox while a worker thread writes it, and
# Django's shared-cache in-memory SQLite test database answers such a read "table is locked" at
# once (no busy timeout applies) — a failure of the test database, not of the app (which runs
# SQLite on a file in WAL mode). The PostgreSQL run (REQUIRE_SERVICES=1) always runs it.
@pytest.mark.postgres
def test_compliance_reviews_a_case_approves_it_and_sees_the_partner_acknowledge_it(
    live_server, page, settings, compliance_officer, queue, simulator, background_sends
):
    settings.SPILLWAY_RECLAIM_EFFECTIVE_DAYS = 0  # handed back as soon as the partner acknowledges
    proposed, other = queue
    applicant = proposed.referral.applicant
    base = live_server.url

    # --- the review queue: oldest first, what qualified each case --------------------------------
    log_in(page, base, compliance_officer.username)
    page.goto(f"{base}/admin/referrals/reclaim/")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("LN-7001")
    expect(rows.nth(1)).to_contain_text("LN-7002")
    expect(rows.nth(0).locator(".reclaim-status")).to_have_attribute("data-status", "under_review")
    expect(rows.nth(0).locator(".reclaim-status")).to_have_text("审核中")
    expect(rows.nth(0)).to_contain_text("3 / 3")
    expect(rows.nth(0)).to_contain_text("operations")  # who proposed it
    expect(page.get_by_test_id("near-miss-link")).to_contain_text("(1)")
    expect(page.get_by_test_id("scan")).to_be_visible()

    # --- the case: evidence, every rule checked again, the borrower masked -----------------------
    rows.nth(0).locator("th.field-loan_display a").click()
    expect(page).to_have_url(f"{base}/admin/referrals/reclaim/{proposed.pk}/change/")
    status = page.get_by_test_id("reclaim-status")
    expect(status).to_have_attribute("data-status", "under_review")
    for code in RULE_CODES:
        expect(page.get_by_test_id(f"rule-{code}")).to_have_attribute("data-ok", "true")
    expect(page.get_by_test_id("evidence-ontime")).to_have_text("3 / 3")
    expect(page.get_by_test_id("evidence-fee")).to_have_text("200.00")
    expect(page.get_by_test_id("evidence-allowed")).to_have_text("是")
    expect(page.get_by_test_id("evidence-overdue")).to_have_text("否")
    expect(page.locator('[data-testid="repayment"][data-on-time="true"]')).to_have_count(3)
    expect(page.get_by_test_id("fact-borrower")).to_contain_text(applicant.name_masked)
    content = page.locator("#content-main").inner_text()
    for clear in (applicant.name, applicant.phone, applicant.national_id):
        assert clear not in content
    expect(page.get_by_test_id("reclaim-timeline").get_by_test_id("transition")).to_have_count(2)
    expect(page.get_by_test_id("reclaim-notice")).to_contain_text("尚未排队")
    screenshot(page, "reclaim-review.png")

    # --- approve: a reason is required ------------------------------------------------------------
    page.get_by_test_id("approve").click()
    expect(page.locator("#action-approve .errorlist")).to_be_visible()
    expect(status).to_have_attribute("data-status", "under_review")
    page.get_by_test_id("approve-reason").fill("三期均在到期日前还款，合同允许回捞，同意")
    page.get_by_test_id("approve").click()
    expect(page.locator(".messagelist .success")).to_be_visible()
    expect(status).to_have_attribute("data-status", "approved")  # the notice leaves SEND_DELAY later
    expect(page.get_by_test_id("notice")).to_have_attribute("data-status", "pending")

    # --- the partner is told (it holds its answer), then acknowledges ------------------------------
    seen = watch_status(page, "reclaimed")
    # In order, never back; "acknowledged" is not seen (the hand-back follows in the same transaction).
    assert seen == [s for s in ("approved", "notified", "reclaimed") if s in seen], seen
    assert "notified" in seen, seen
    assert seen[-1] == "reclaimed", seen
    expect(status).to_have_attribute("data-status", "reclaimed")
    expect(status).to_have_text("已回捞")
    expect(page.get_by_test_id("notice")).to_have_attribute("data-status", "succeeded")
    expect(page.get_by_test_id("notice-attempts")).to_have_text("1")
    targets = page.get_by_test_id("reclaim-timeline").get_by_test_id("transition")
    expect(targets).to_have_count(6)
    assert [targets.nth(i).get_attribute("data-target") for i in range(6)] == [
        "candidate", "under_review", "approved", "notified", "acknowledged", "reclaimed",
    ]  # fmt: skip
    expect(targets.nth(3)).to_contain_text("系统")  # the notice moved it, not a person
    screenshot(page, "reclaim-reclaimed.png")

    # --- what the partner and the ledger recorded ----------------------------------------------
    assert background_sends == ["succeeded"]
    notices = [
        request
        for request in simulator.records("PARTNER_A")["partners"]["PARTNER_A"]["requests"]
        if request["kind"] == "reclaim"
    ]
    assert len(notices) == 1, notices
    assert notices[0]["idempotency_key"] == str(proposed.pk)
    assert (notices[0]["status"], notices[0]["outcome"]) == (200, "answered")
    assert simulator.state.counts()["reclaims"] == 1

    reclaim = Reclaim.objects.get(pk=proposed.pk)
    assert reclaim.status == Reclaim.Status.RECLAIMED
    assert reclaim.decided_by == compliance_officer
    assert reclaim.notified_at <= reclaim.acknowledged_at <= reclaim.reclaimed_at
    dispatch = Dispatch.objects.get(kind=Dispatch.Kind.RECLAIM_NOTICE)
    assert (dispatch.idempotency_key, dispatch.status, dispatch.attempts) == (str(reclaim.pk), "succeeded", 1)
    sent = ConsentEvent.objects.filter(consent_id=reclaim.consent_id, type=ConsentEvent.Type.RECLAIM_NOTICE_SENT)
    assert [event.payload["reclaim"] for event in sent] == [str(reclaim.pk)]
    assert Reclaim.objects.get(pk=other.pk).status == Reclaim.Status.CANDIDATE  # untouched
