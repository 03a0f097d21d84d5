"""Background jobs from the admin: verifying the ledger, exporting evidence, retrying many failed
referrals — each end to end (started on its screen, run by the task, followed on the job's page and
its JSON), the progress written a chunk at a time, who may see what, and what happens when a
worker is lost half-way."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import re
import zipfile

import pytest
import responses
from django.contrib.staticfiles import finders
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone, translation

from referrals import merkle, triggers
from referrals.models import Applicant, ConsentEvent, Dispatch, Job, LedgerCheckpoint, Referral
from referrals.services import jobs
from referrals.services import ledger as ledger_services
from referrals.services.dispatch import dispatch_send
from tests.factories import UserFactory, make_contract
from tests.referrals import builders
from tests.signin import TwoFactorClient

ROLES = ["compliance_officer", "partnership_manager", "operations", "finance", "auditor", "origination", "outsider"]
STAFF = {"compliance_officer", "partnership_manager", "operations", "finance", "auditor"}


# --- helpers --------------------------------------------------------------------------------------
def url(name: str, *args) -> str:
    return reverse(f"admin:referrals_{name}", args=args)


def job_page(job: Job) -> str:
    return url("job_change", job.pk)


def job_json(job: Job) -> str:
    return url("job_progress", job.pk)


def job_download(job: Job) -> str:
    return url("job_download", job.pk)


def browser(user, language: str = "en") -> TwoFactorClient:
    """A signed-in admin session (both factors) in English, so the tests read the source strings."""
    client = TwoFactorClient(headers={"Accept-Language": language})
    client.force_login(user)
    return client


def download(client, job: Job):
    """The download's response and its bytes (read to the end, which closes the file)."""
    response = client.get(job_download(job))
    content = b"".join(response.streaming_content) if response.status_code == 200 else b""
    return response, content


def by_testid(html: str, name: str) -> str:
    match = re.search(rf'data-testid="{re.escape(name)}"[^>]*>(.*?)</', html, re.S)
    assert match, f"no data-testid={name!r} on the page"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def tamper(sql: str, params=()) -> None:
    """Change the ledger behind the app's back (the triggers dropped for the moment, as an attacker
    with the database owner's rights would)."""
    triggers.drop(connection)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    finally:
        triggers.install(connection)


def add_events(consent, n: int) -> None:
    for i in range(n):
        with transaction.atomic():
            ledger_services.ledger_append(consent=consent, type="probe_sent", payload={"partner": "PARTNER_A", "n": i})


def recorded_progress(monkeypatch) -> list[tuple[int, int]]:
    """Every progress write a job makes, as (done, total) read back from the row."""
    writes: list[tuple[int, int]] = []
    real = jobs._progress

    def spy(job, **fields):
        real(job, **fields)
        writes.append(tuple(Job.objects.filter(pk=job.pk).values_list("done", "total").get()))

    monkeypatch.setattr(jobs, "_progress", spy)
    return writes


def send(dispatch: Dispatch, *, status: int) -> str:
    """The partner answers the call with ``status`` (stubbed at the HTTP boundary)."""
    dispatch = Dispatch.objects.select_related("partner").get(pk=dispatch.pk)
    endpoint = "probe" if dispatch.kind == Dispatch.Kind.PROBE else "applications"
    with responses.RequestsMock() as stub:
        stub.add(responses.POST, f"{dispatch.partner.api_base_url}/{endpoint}", json={}, status=status)
        return dispatch_send(dispatch.pk)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def eager(settings):
    """Celery tasks run in-process when their transaction commits."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = True


@pytest.fixture
def named_partners(db):
    return builders.partners()


@pytest.fixture
def admin_text(compliance_officer):
    return builders.consent_text(actor=compliance_officer)


@pytest.fixture
def applicants(origination, admin_text, named_partners) -> list[Applicant]:
    """Four applicants, a consent each, a few more events on two of them, sealed by a checkpoint,
    then one event more (not sealed yet)."""
    made = [builders.applicant_with_consent(origination=origination, text=admin_text, seq=seq) for seq in range(1, 5)]
    add_events(made[0].consents.get(), 2)
    add_events(made[2].consents.get(), 1)
    ledger_services.ledger_checkpoint()
    add_events(made[1].consents.get(), 1)
    return made


@pytest.fixture
def failed_referrals(origination, admin_text, named_partners, partnership_manager, compliance_officer):
    """Three applicants routed to PARTNER_A: two whose probe the partner refused (failed), one queued."""
    for priority, partner in zip((20, 10), named_partners, strict=True):
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer, priority=priority)
    made = [builders.applicant_with_consent(origination=origination, text=admin_text, seq=seq) for seq in range(11, 14)]
    referrals = [applicant.referrals.get(partner=named_partners[0]) for applicant in made]
    for referral in referrals[:2]:
        assert send(referral.dispatches.get(kind=Dispatch.Kind.PROBE), status=422) == "failed"
    return [Referral.objects.get(pk=referral.pk) for referral in referrals]


def start_verification(client) -> Job:
    response = client.post(url("ledgercheckpoint_verify"))
    job = Job.objects.get(kind=Job.Kind.VERIFY_LEDGER)
    assert response.status_code == 302
    assert response["Location"] == job_page(job)
    return job


# --- ledger verification --------------------------------------------------------------------------
def test_verification_is_started_from_the_checkpoints_and_ends_with_the_verdict_on_its_page(
    applicants, compliance_officer, eager, django_capture_on_commit_callbacks
):
    client = browser(compliance_officer)
    checkpoints = client.get(url("ledgercheckpoint_changelist")).content.decode()
    assert f'href="{url("ledgercheckpoint_verify")}"' in checkpoints
    assert 'id="verify_form"' in client.get(url("ledgercheckpoint_verify")).content.decode()
    assert not Job.objects.exists()  # a GET starts nothing

    with django_capture_on_commit_callbacks(execute=True):
        job = start_verification(client)
    job.refresh_from_db()
    events, sealed = ConsentEvent.objects.count(), LedgerCheckpoint.objects.count()
    assert (job.status, job.requested_by, job.done, job.total, job.attempts) == (
        "done", compliance_officer, events + sealed, events + sealed, 1,
    )  # fmt: skip
    assert job.result["ok"] is True
    assert (job.result["consents"], job.result["events"], job.result["checkpoints"]) == (4, events, sealed)

    page = client.get(job_page(job)).content.decode()
    assert by_testid(page, "job-status") == "Done"
    assert '<progress class="job-progress" data-testid="job-progress" max="100" value="100">' in page
    assert by_testid(page, "job-verdict") == "Ledger verified: every chain and checkpoint matches."
    assert f"Checked 4 consents, {events} events and {sealed} checkpoints." in page
    assert f'data-poll-url="{job_json(job)}"' in page
    assert "/static/jobs/progress.js" in page
    assert "/static/jobs/job.js" in page
    assert "<script>" not in page  # only src'd scripts
    assert not re.search(r"\son[a-z]+=", page)  # and no inline handlers

    body = client.get(job_json(job)).json()
    assert (body["status"], body["percent"], body["finished"], body["done"], body["total"]) == (
        "done", 100, True, events + sealed, events + sealed,
    )  # fmt: skip
    assert "Ledger verified" in body["result_html"]
    assert body["counts"] == f"{events + sealed} of {events + sealed}"


def test_verification_moves_a_chunk_at_a_time_with_one_write_per_chunk(applicants, compliance_officer, monkeypatch):
    monkeypatch.setattr(jobs, "VERIFY_CONSENTS_PER_CHUNK", 1)
    writes = recorded_progress(monkeypatch)
    job = jobs.ledger_verify_start(actor=compliance_officer)
    jobs.job_execute(job.pk)
    total = ConsentEvent.objects.count() + LedgerCheckpoint.objects.count()
    # The start, one per consent, one for the single chunk of checkpoints: never one per event.
    assert len(writes) == 1 + 4 + 1 < total
    done = [d for d, _t in writes]
    assert done == sorted(done)
    assert (done[0], done[-1]) == (0, total)
    assert all(t == total for _d, t in writes)
    assert 0 < done[2] < total  # part-way at some point


def test_a_tampered_event_is_found_and_named_as_the_first_broken(
    applicants, compliance_officer, auditor, eager, django_capture_on_commit_callbacks
):
    target = applicants[2].consents.get().events.get(seq=2)
    tamper("UPDATE referrals_consentevent SET payload = %s WHERE id = %s", [json.dumps({"partner": "Z"}), target.pk])
    with django_capture_on_commit_callbacks(execute=True):
        job = start_verification(browser(auditor))
    job.refresh_from_db()
    assert job.status == "done"  # the job worked; the ledger did not verify
    assert job.result["ok"] is False
    first = job.result["problems"][0]
    assert f"consent {target.consent_id} event #2 (id {target.pk})" in first
    assert "altered" in first
    assert job.result["problems"] == ledger_services.ledger_verify().problems  # same check as the command

    page = browser(auditor).get(job_page(job)).content.decode()
    assert re.search(r'data-testid="job-verdict" data-ok="false">The ledger does not verify: \d+ problems?\.', page)
    assert by_testid(page, "job-first-problem") == first.replace('"', "&quot;").replace("'", "&#x27;")


@pytest.mark.parametrize("tampering", ["deleted event", "reordered events", "checkpoint file", "forged checkpoint"])
def test_chunked_verification_finds_what_the_whole_verification_finds(applicants, settings, tampering):
    second = applicants[0].consents.get()
    add_events(applicants[3].consents.get(), 2)
    ledger_services.ledger_checkpoint()  # a second checkpoint: its chain of roots crosses chunks
    if tampering == "deleted event":
        tamper("DELETE FROM referrals_consentevent WHERE id = %s", [second.events.get(seq=2).pk])
    elif tampering == "reordered events":
        two, three = second.events.get(seq=2), second.events.get(seq=3)
        tamper("UPDATE referrals_consentevent SET seq = 99 WHERE id = %s", [two.pk])
        tamper("UPDATE referrals_consentevent SET seq = 2 WHERE id = %s", [three.pk])
        tamper("UPDATE referrals_consentevent SET seq = 3 WHERE id = %s", [two.pk])
    elif tampering == "checkpoint file":
        first = LedgerCheckpoint.objects.order_by("id").first()
        path = settings.SPILLWAY_CHECKPOINT_DIR / ledger_services.checkpoint_file_name(first)
        path.write_text(path.read_text().replace(first.root, "0" * 64))
    else:
        last = LedgerCheckpoint.objects.order_by("id").last()
        tamper("UPDATE referrals_ledgercheckpoint SET previous_root = %s WHERE id = %s", ["f" * 64, last.pk])
    whole = ledger_services.ledger_verify()
    assert whole.problems, "the tampering went unnoticed"
    for consents, checkpoints in ((1, 1), (3, 1), (1000, 50)):
        chunked = ledger_services.ledger_verify_chunked(
            on_chunk=lambda report: None, consents_per_chunk=consents, checkpoints_per_chunk=checkpoints
        )
        assert chunked.problems == whole.problems, (consents, checkpoints)
        assert (chunked.consents, chunked.events, chunked.checkpoints) == (
            whole.consents, whole.events, whole.checkpoints,
        )  # fmt: skip


def test_verification_starts_over_when_its_worker_was_lost(applicants, compliance_officer, monkeypatch):
    job = jobs.ledger_verify_start(actor=compliance_officer)
    real = jobs.ledger_verify_chunked

    def lost(**kwargs):
        kwargs["on_chunk"](ledger_services.LedgerReport(events=3))
        raise SystemExit("worker killed")  # not an Exception: nothing marks the job failed

    monkeypatch.setattr(jobs, "ledger_verify_chunked", lost)
    with pytest.raises(SystemExit):
        jobs.job_execute(job.pk)
    job.refresh_from_db()
    assert (job.status, job.done, job.attempts) == ("running", 3, 1)

    monkeypatch.setattr(jobs, "ledger_verify_chunked", real)
    jobs.job_execute(job.pk)  # the redelivered message
    job.refresh_from_db()
    total = ConsentEvent.objects.count() + LedgerCheckpoint.objects.count()
    assert (job.status, job.done, job.total, job.attempts, job.result["ok"]) == ("done", total, total, 2, True)


# --- evidence export ------------------------------------------------------------------------------
def test_one_applicants_export_runs_as_a_job_and_only_its_requester_downloads_the_bundle(
    applicants, compliance_officer, second_compliance_officer, eager, django_capture_on_commit_callbacks
):
    applicant = applicants[0]
    consent = applicant.consents.get()
    stored = list(consent.events.order_by("seq"))
    client = browser(compliance_officer)
    assert "Prepare the evidence bundle" in client.get(url("applicant_export", applicant.pk)).content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url("applicant_export", applicant.pk))
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == job_page(job)
    job.refresh_from_db()
    assert (job.kind, job.status, job.done, job.total) == ("export_evidence", "done", 1, 1)
    assert job.file == f"evidence-{applicant.external_id}.json"
    [recorded] = consent.events.filter(type=ConsentEvent.Type.EVIDENCE_EXPORTED)
    assert recorded.payload["by"] == compliance_officer.username
    assert recorded.payload["job"] == str(job.pk)

    page = client.get(job_page(job)).content.decode()
    assert f'href="{job_download(job)}"' in page
    response, content = download(client, job)
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="evidence-{applicant.external_id}.json"'
    assert "no-store" in response["Cache-Control"]
    raw = content.decode()
    bundle = json.loads(raw)
    assert bundle["format"] == "spillway-evidence-v1"
    assert bundle["applicant"]["external_id"] == applicant.external_id
    assert [e["hash"] for e in bundle["consents"][0]["events"]] == [e.hash for e in stored]
    assert builders.phone(1) not in raw  # masked, as always
    assert hashlib.sha256(merkle.canonical_json(bundle)).hexdigest() == recorded.payload["bundle_sha256"]

    # Downloading again records nothing more: the export was recorded once, when it was made.
    assert download(client, job)[0].status_code == 200
    assert consent.events.filter(type=ConsentEvent.Type.EVIDENCE_EXPORTED).count() == 1

    # Another compliance officer may export evidence too, but not follow or take this one.
    other = browser(second_compliance_officer)
    assert [other.get(target).status_code for target in (job_page(job), job_json(job), job_download(job))] == [403] * 3


def test_the_applicants_list_exports_a_selection_into_one_zip(
    applicants, compliance_officer, eager, django_capture_on_commit_callbacks
):
    client = browser(compliance_officer)
    chosen = applicants[:3]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url("applicant_changelist"),
            {"action": "export_selected", "_selected_action": [str(a.pk) for a in chosen]},
        )
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == job_page(job)
    job.refresh_from_db()
    assert (job.status, job.done, job.total) == ("done", 3, 3)
    assert job.file.endswith(".zip")
    assert by_testid(client.get(job_page(job)).content.decode(), "job-exported").startswith(
        "Evidence of 3 applicants exported"
    )
    archive = zipfile.ZipFile(io.BytesIO(download(client, job)[1]))
    assert sorted(archive.namelist()) == sorted(f"evidence-{a.external_id}.json" for a in chosen)
    for applicant in chosen:
        bundle = json.loads(archive.read(f"evidence-{applicant.external_id}.json"))
        assert bundle["consents"][0]["id"] == str(applicant.consents.get().pk)
    exported = ConsentEvent.objects.filter(type=ConsentEvent.Type.EVIDENCE_EXPORTED)
    assert sorted(exported.values_list("consent__applicant_id", flat=True)) == sorted(a.pk for a in chosen)


def test_the_export_action_is_offered_by_permission(client, cast, applicants):
    for role in ("compliance_officer", "auditor"):
        client.force_login(cast[role])
        action_form = client.get(url("applicant_changelist")).context["action_form"]
        offered = {name for name, _label in action_form.fields["action"].choices if name} if action_form else set()
        assert offered == ({"export_selected"} if role == "compliance_officer" else set()), role
    client.force_login(cast["operations"])  # does not read the applicants at all (referrals 0010)
    assert client.get(url("applicant_changelist")).status_code == 403


def test_an_export_resumed_after_a_lost_worker_records_each_applicant_once(applicants, compliance_officer, monkeypatch):
    job = jobs.evidence_export_start(actor=compliance_officer, applicants=applicants[:3])
    real = jobs.evidence_export
    exported: list[str] = []

    def lost_on_the_second(**kwargs):
        if len(exported) == 1:
            raise SystemExit("worker killed")  # after the first was recorded, before any progress write
        exported.append(kwargs["applicant"].external_id)
        return real(**kwargs)

    monkeypatch.setattr(jobs, "evidence_export", lost_on_the_second)
    with pytest.raises(SystemExit):
        jobs.job_execute(job.pk)
    job.refresh_from_db()
    assert (job.status, job.done) == ("running", 0)
    assert ConsentEvent.objects.filter(type=ConsentEvent.Type.EVIDENCE_EXPORTED).count() == 1

    monkeypatch.setattr(jobs, "evidence_export", real)
    jobs.job_execute(job.pk)
    job.refresh_from_db()
    assert (job.status, job.done, job.attempts) == ("done", 3, 2)
    exports = ConsentEvent.objects.filter(type=ConsentEvent.Type.EVIDENCE_EXPORTED, payload__job=str(job.pk))
    assert sorted(exports.values_list("consent__applicant_id", flat=True)) == sorted(a.pk for a in applicants[:3])
    assert [item["label"] for item in job.result["exported"]] == [a.external_id for a in applicants[:3]]
    assert len(zipfile.ZipFile(jobs.job_path(job)).namelist()) == 3


def test_an_applicant_the_service_refuses_is_listed_as_not_exported(applicants, compliance_officer, monkeypatch):
    lonely = applicants[3]
    job = jobs.evidence_export_start(actor=compliance_officer, applicants=[applicants[0], lonely])
    real = jobs.evidence_export

    def refuse_the_lonely(**kwargs):
        if kwargs["applicant"].pk == lonely.pk:
            raise ValidationError("This applicant has no consent on record.")
        return real(**kwargs)

    monkeypatch.setattr(jobs, "evidence_export", refuse_the_lonely)
    jobs.job_execute(job.pk)
    job.refresh_from_db()
    assert job.status == "done"
    assert [item["label"] for item in job.result["exported"]] == [applicants[0].external_id]
    assert job.result["not_exported"] == [
        {"id": str(lonely.pk), "label": lonely.external_id, "why": "This applicant has no consent on record."}
    ]
    assert job.file == f"evidence-{applicants[0].external_id}.json"


# --- bulk retry -----------------------------------------------------------------------------------
def test_bulk_retry_runs_as_a_job_and_reports_what_went_back_and_why_the_others_did_not(
    failed_referrals, operations_user, django_capture_on_commit_callbacks
):
    client = browser(operations_user)
    response = client.post(
        url("referral_changelist"),
        {"action": "retry_selected", "_selected_action": [str(r.pk) for r in failed_referrals]},
    )
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == job_page(job)
    assert (job.kind, job.status, job.total) == ("retry_referrals", "queued", 3)
    assert by_testid(client.get(job_page(job)).content.decode(), "job-status") == "Queued"

    jobs.job_execute(job.pk)  # the worker (the partner calls it queues are not sent here)
    job.refresh_from_db()
    failed, queued = failed_referrals[:2], failed_referrals[2]
    assert (job.status, job.done) == ("done", 3)
    assert job.result["requeued"] == 2
    [refused] = job.result["refused"]
    assert refused["count"] == 1
    assert refused["why"] == "Only failed referrals can be retried; this one is queued."
    assert refused["items"] == [[str(queued.pk), f"PARTNER_A {str(queued.pk)[:8]}"]]
    assert set(Referral.objects.filter(pk__in=[r.pk for r in failed]).values_list("status", flat=True)) == {"queued"}
    assert set(Dispatch.objects.filter(referral__in=failed).values_list("status", flat=True)) == {"pending"}

    page = client.get(job_page(job)).content.decode()
    assert by_testid(page, "job-requeued").startswith("2 referrals went back in the queue.")
    refusals = re.search(r'data-testid="job-refused">(.*?)</ul>', page, re.S).group(1)
    assert "1 referral: Only failed referrals can be retried; this one is queued." in refusals
    assert f'href="{url("referral_change", queued.pk)}"' in refusals


def test_a_retry_resumed_after_a_lost_worker_goes_on_after_its_last_committed_chunk(
    failed_referrals, operations_user, monkeypatch
):
    monkeypatch.setattr(jobs, "RETRY_CHUNK", 1)
    job = jobs.referrals_retry_start(actor=operations_user, referrals=failed_referrals)
    real = jobs.referral_retry
    calls: list[str] = []

    def lost_on_the_second(*, actor, referral):
        calls.append(str(referral.pk))
        if len(calls) == 2:
            raise SystemExit("worker killed")
        return real(actor=actor, referral=referral)

    monkeypatch.setattr(jobs, "referral_retry", lost_on_the_second)
    with pytest.raises(SystemExit):
        jobs.job_execute(job.pk)
    job.refresh_from_db()
    assert (job.status, job.done, job.result["requeued"]) == ("running", 1, 1)

    monkeypatch.setattr(jobs, "referral_retry", real)
    jobs.job_execute(job.pk)
    job.refresh_from_db()
    # The second referral's chunk was rolled back with the worker: retried now, not reported as
    # "already queued".
    assert (job.status, job.done, job.result["requeued"]) == ("done", 3, 2)
    assert [group["count"] for group in job.result["refused"]] == [1]
    assert Referral.objects.get(pk=failed_referrals[1].pk).status == "queued"


# --- who may see what -----------------------------------------------------------------------------
@pytest.fixture
def three_jobs(applicants, failed_referrals, compliance_officer, operations_user):
    return {
        "verify": jobs.ledger_verify_start(actor=compliance_officer),
        "export": jobs.evidence_export_start(actor=compliance_officer, applicants=applicants[:1]),
        "retry": jobs.referrals_retry_start(actor=operations_user, referrals=failed_referrals),
    }


FOLLOWERS = {
    "verify": {"compliance_officer", "auditor"},
    "export": {"compliance_officer"},  # the requester only
    "retry": {"operations"},
}


@pytest.mark.parametrize("role", ROLES)
def test_each_job_page_and_its_json_are_for_those_who_may_do_what_it_does(client, cast, three_jobs, role):
    client.force_login(cast[role])
    for name, job in three_jobs.items():
        for target in (job_page(job), job_json(job)):
            response = client.get(target)
            if role not in STAFF:
                assert response.status_code == 302, (name, target)
                assert response["Location"].startswith(reverse("admin:login"))
            else:
                assert response.status_code == (200 if role in FOLLOWERS[name] else 403), (role, name, target)
    listed = client.get(url("job_changelist"))
    if role in {"compliance_officer", "auditor", "operations"}:
        shown = {job.pk for job in listed.context["cl"].result_list}
        assert shown == {job.pk for name, job in three_jobs.items() if role in FOLLOWERS[name]}
    elif role in STAFF:
        assert listed.status_code == 403


def test_starting_a_job_needs_its_permission(client, cast, applicants, failed_referrals):
    for role in ("operations", "finance", "partnership_manager"):
        client.force_login(cast[role])
        assert client.get(url("ledgercheckpoint_verify")).status_code == 403
        assert client.post(url("ledgercheckpoint_verify")).status_code == 403
    for role in ("auditor", "operations"):
        client.force_login(cast[role])
        assert client.post(url("applicant_export", applicants[0].pk)).status_code == 403
    client.force_login(cast["compliance_officer"])
    response = client.post(
        url("referral_changelist"), {"action": "retry_selected", "_selected_action": [str(failed_referrals[0].pk)]}
    )
    assert response.status_code == 200  # the action is not offered
    assert not Job.objects.exists()


def test_the_download_is_refused_until_the_export_is_done_and_to_anyone_but_its_requester(
    applicants, compliance_officer, auditor
):
    job = jobs.evidence_export_start(actor=compliance_officer, applicants=applicants[:1])
    client = browser(compliance_officer)
    assert client.get(job_download(job)).status_code == 403  # queued: no file yet
    jobs.job_execute(job.pk)
    assert download(client, job)[0].status_code == 200
    superuser = browser(UserFactory(username="root", is_superuser=True, is_staff=True))
    assert superuser.get(job_page(job)).status_code == 403  # not shared, not even with a superuser
    assert superuser.get(job_download(job)).status_code == 403


def test_a_job_whose_requester_lost_the_permission_fails_with_the_reason(applicants, compliance_officer):
    with translation.override("en"):  # the job speaks the language it was asked in
        job = jobs.ledger_verify_start(actor=compliance_officer)
    compliance_officer.groups.clear()
    jobs.job_execute(job.pk)  # loads the requester afresh: no cached permissions
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "compliance may no longer do this.")


# --- lost workers, the sweep, superseded attempts ---------------------------------------------------
def test_a_job_whose_worker_keeps_dying_is_failed_with_the_reason(applicants, compliance_officer):
    job = jobs.ledger_verify_start(actor=compliance_officer)  # asked in Chinese, the default
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempts=jobs.MAX_ATTEMPTS)
    jobs.job_execute(job.pk)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == "已尝试 3 次后停止：每次执行它的工作进程都丢失了。"
    assert job.finished_at is not None


def test_a_finished_job_is_not_run_again_by_a_duplicate_message(applicants, compliance_officer):
    job = jobs.evidence_export_start(actor=compliance_officer, applicants=applicants[:1])
    jobs.job_execute(job.pk)
    jobs.job_execute(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("done", 1)
    assert ConsentEvent.objects.filter(type=ConsentEvent.Type.EVIDENCE_EXPORTED).count() == 1


def test_an_older_attempt_stops_at_its_next_chunk_once_a_newer_one_has_started(applicants, compliance_officer):
    job = jobs.ledger_verify_start(actor=compliance_officer)
    older = jobs._claim(job.pk)
    newer = jobs._claim(job.pk)
    assert (older.attempts, newer.attempts) == (1, 2)
    with pytest.raises(jobs.Superseded):
        jobs._progress(older, done=1)
    jobs._progress(newer, done=2)
    assert Job.objects.get(pk=job.pk).done == 2


def test_the_sweep_queues_stalled_jobs_again_and_deletes_old_files(
    applicants, compliance_officer, eager, django_capture_on_commit_callbacks
):
    long_ago = timezone.now() - datetime.timedelta(hours=2)
    stalled = jobs.ledger_verify_start(actor=compliance_officer)
    Job.objects.filter(pk=stalled.pk).update(status=Job.Status.RUNNING, attempts=1, updated_at=long_ago)
    moving = jobs.ledger_verify_start(actor=compliance_officer)
    Job.objects.filter(pk=moving.pk).update(status=Job.Status.RUNNING, attempts=1)  # its worker is on it
    old_export = jobs.evidence_export_start(actor=compliance_officer, applicants=applicants[:1])
    jobs.job_execute(old_export.pk)
    Job.objects.filter(pk=old_export.pk).update(finished_at=timezone.now() - datetime.timedelta(days=8))
    old_export.refresh_from_db()
    assert jobs.job_path(old_export).is_file()

    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.jobs_sweep() == {"requeued": 1, "files_deleted": 1}
    stalled.refresh_from_db()
    moving.refresh_from_db()
    old_export.refresh_from_db()
    assert (stalled.status, stalled.attempts, stalled.result["ok"]) == ("done", 2, True)
    assert moving.status == "running"
    assert old_export.file == ""
    assert not jobs.job_folder(old_export).exists()


# --- cheap pages ----------------------------------------------------------------------------------
def test_job_pages_and_the_list_stay_within_a_few_queries(
    three_jobs, compliance_officer, operations_user, django_assert_max_num_queries
):
    for job in three_jobs.values():
        jobs.job_execute(job.pk)
    officer = browser(compliance_officer)
    for job in (three_jobs["verify"], three_jobs["export"]):
        for target in (job_page(job), job_json(job)):
            officer.get(target)  # warm the session
            with django_assert_max_num_queries(8):
                assert officer.get(target).status_code == 200
    operations = browser(operations_user)
    operations.get(job_page(three_jobs["retry"]))
    with django_assert_max_num_queries(8):
        assert operations.get(job_page(three_jobs["retry"])).status_code == 200

    def list_queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert officer.get(url("job_changelist")).status_code == 200
        return len(captured)

    few = list_queries()
    for _ in range(20):
        jobs.ledger_verify_start(actor=compliance_officer)
    assert list_queries() == few


def test_the_scripts_are_static_files():
    for name in ("jobs/progress.js", "jobs/job.js", "jobs/jobs.css", "settlements/run_progress.js"):
        assert finders.find(name), name


def test_the_job_page_speaks_chinese(applicants, compliance_officer):
    job = jobs.ledger_verify_start(actor=compliance_officer)
    jobs.job_execute(job.pk)
    page = browser(compliance_officer, language="zh-hans").get(job_page(job)).content.decode()
    assert by_testid(page, "job-kind") == "台账校验"
    assert by_testid(page, "job-status") == "已完成"
    assert "台账校验通过" in by_testid(page, "job-verdict")


def test_the_admin_module_lists_background_jobs_for_those_who_may_start_one(client, cast, db):
    for role, listed in (("compliance_officer", True), ("operations", True), ("finance", False)):
        client.force_login(cast[role])
        page = client.get(reverse("admin:app_list", args=["referrals"]))
        assert (url("job_changelist") in page.content.decode()) is listed, role
