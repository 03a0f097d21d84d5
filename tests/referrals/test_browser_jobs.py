"""A background job in a real browser (Playwright with Debian's Chromium): a compliance officer
starts a verification of the whole consent ledger from the checkpoints list and watches its bar
move to 100 % on the job's page — without the page reloading — until the verdict appears."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from playwright.sync_api import expect

from referrals.models import Job
from referrals.services import jobs
from referrals.services.ledger import ledger_checkpoint
from tests.factories import UserFactory
from tests.referrals import builders
from tests.signin import sign_in

PER_CHUNK_DELAY = 0.4  # seconds after each progress write: long enough for the page to show it
SCREENSHOT = Path(settings.VAR_DIR) / "screenshots" / "compliance-ledger-verification.png"


@pytest.fixture
def background_jobs(live_server, monkeypatch):
    """Jobs run in a thread of this process (no Celery worker here), one consent per chunk and
    each chunk slowed down, so the page can show the bar between 0 and 100 %. The threads are
    joined before the database is emptied; an exception in one fails the test."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    real_progress = jobs._progress

    def slow_progress(job, **fields):
        real_progress(job, **fields)
        time.sleep(PER_CHUNK_DELAY)

    def execute(job_id):
        try:
            jobs.job_execute(job_id)
        except BaseException as exc:  # reported by the test, not by threading's excepthook
            errors.append(exc)
        finally:
            connections.close_all()

    def enqueue(job_id):
        thread = threading.Thread(target=execute, args=(job_id,), name=f"job-{job_id}", daemon=True)
        threads.append(thread)
        thread.start()

    monkeypatch.setattr(jobs, "VERIFY_CONSENTS_PER_CHUNK", 1)
    monkeypatch.setattr(jobs, "_progress", slow_progress)
    monkeypatch.setattr(jobs, "_enqueue", enqueue)
    yield threads, errors
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a job did not finish"
    assert not errors, errors


def test_compliance_officer_verifies_the_ledger_and_watches_the_bar_reach_100_percent(
    live_server, page, background_jobs
):
    officer = UserFactory(username="hewei", roles=["compliance_officer"])
    origination = UserFactory(username="origination", roles=["origination"], is_staff=False)
    builders.partners()
    text = builders.consent_text(actor=officer)
    for seq in range(1, 7):
        builders.applicant_with_consent(origination=origination, text=text, seq=seq)
    ledger_checkpoint()
    base = live_server.url

    page.set_viewport_size({"width": 1440, "height": 1000})
    sign_in(page, base, officer)
    page.goto(f"{base}/admin/referrals/ledgercheckpoint/")
    page.get_by_test_id("verify-ledger").click()
    page.get_by_test_id("verify-start").click()
    expect(page.get_by_test_id("job")).to_be_visible()
    job_id = page.get_by_test_id("job").get_attribute("data-job-id")
    expect(page).to_have_url(f"{base}/admin/referrals/job/{job_id}/change/")
    page.evaluate("window.notReloaded = true")  # gone if the page were loaded again

    # Sample the bar (the script moves it every half second) until the job says it is done.
    progress, status = page.get_by_test_id("job-progress"), page.get_by_test_id("job-status")
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        value = int(float(progress.get_attribute("value")))
        text_shown = page.get_by_test_id("job-progress-text").inner_text()
        if not seen or seen[-1] != (value, text_shown):
            seen.append((value, text_shown))
        if status.get_attribute("data-status") == "done":
            break
        page.wait_for_timeout(50)
    assert any(0 < value < 100 and shown == f"{value}%" for value, shown in seen), seen
    assert [value for value, _shown in seen] == sorted(value for value, _shown in seen), seen
    expect(status).to_have_attribute("data-status", "done")
    expect(status).to_have_text("已完成")
    expect(progress).to_have_attribute("value", "100")
    expect(page.get_by_test_id("job-progress-text")).to_have_text("100%")
    verdict = page.get_by_test_id("job-verdict")
    expect(verdict).to_have_attribute("data-ok", "true")
    expect(verdict).to_contain_text("台账校验通过")
    assert page.evaluate("window.notReloaded") is True

    job = Job.objects.get(pk=job_id)
    assert (job.status, job.result["ok"], job.result["consents"]) == ("done", True, 6)
    expect(page.get_by_test_id("job-counts")).to_have_text(f"{job.done} / {job.total}")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
