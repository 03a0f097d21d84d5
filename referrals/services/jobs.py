"""Background jobs: long work asked for in the admin (verify the ledger, export evidence, retry
many failed referrals) runs in a Celery task that records how far it has got on a ``Job`` row —
one write per chunk, never one per item — and the job's admin page polls that row.

Messages are redelivered after a lost worker (``acks_late``) and the sweep queues again a job that
stopped moving, so every kind can run again without doing anything twice: a verification starts
over (it only reads); an export skips the applicants the ledger says this job already exported;
a retry goes on after the last chunk it committed (a chunk's retries and its progress commit
together). Each start counts as an attempt; only the latest attempt may write, so a superseded
worker stops at its next chunk, and a job whose worker keeps dying is failed with the reason.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from referrals.models import Applicant, ConsentEvent, Job, LedgerCheckpoint, Referral
from referrals.services.consents import evidence_export
from referrals.services.ledger import LedgerReport, ledger_verify_chunked
from referrals.services.operations import referral_retry

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 3  # a job started this many times without finishing is failed, not started again
EXPORT_LIMIT = 200  # applicants in one evidence export
RETRY_LIMIT = 5000  # referrals in one retry job
VERIFY_CONSENTS_PER_CHUNK = 1000
VERIFY_CHECKPOINTS_PER_CHUNK = 50
EXPORT_CHUNK = 10  # applicants between two progress writes
RETRY_CHUNK = 50  # referrals retried in one transaction, with their progress
PROBLEMS_KEPT = 20  # a broken ledger's problems kept in the result (the first is the one that matters)
EXAMPLES_KEPT = 10  # items named per outcome in a retry's result
UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class Superseded(Exception):
    """A later attempt of the same job has started: this one stops without writing."""


@dataclasses.dataclass(frozen=True)
class JobKind:
    permission: str  # needed to start the job, to follow it, and still when it runs
    shared: bool  # others with the permission may follow it too (an export: its requester only)
    run: Callable[[Job], tuple[dict, str]]  # → the result, and the file it made ("" for none)


# --- who may see what -----------------------------------------------------------------------------
def job_visible_to(user, job: Job) -> bool:
    kind = KINDS[job.kind]
    return user.has_perm(kind.permission) and (kind.shared or job.requested_by_id == user.pk)


def job_download_allowed(user, job: Job) -> bool:
    """An export's file is for the person who asked for it, and no one else."""
    return (
        job.status == Job.Status.DONE
        and bool(job.file)
        and job.requested_by_id == user.pk
        and user.has_perm(KINDS[job.kind].permission)
    )


def jobs_visible_to(user) -> QuerySet[Job]:
    """The jobs ``job_visible_to`` lets this user follow, as one query."""
    shared = [name for name, kind in KINDS.items() if kind.shared and user.has_perm(kind.permission)]
    own = [name for name, kind in KINDS.items() if not kind.shared and user.has_perm(kind.permission)]
    return Job.objects.filter(Q(kind__in=shared) | Q(kind__in=own, requested_by=user))


def may_start_any_job(user) -> bool:
    return any(user.has_perm(kind.permission) for kind in KINDS.values())


def job_path(job: Job) -> Path:
    """Where the job's file is (``job.file`` is a bare name we chose, never a path from outside)."""
    return job_folder(job) / Path(job.file).name


def job_folder(job: Job) -> Path:
    return Path(settings.SPILLWAY_JOB_DIR) / str(job.pk)


# --- starting -------------------------------------------------------------------------------------
def _start(*, actor, kind: str, params: dict, total: int) -> Job:
    """Record the job and queue it once this transaction commits. Whatever the job says later is
    said in the language of the person who asked."""
    if not actor.has_perm(KINDS[kind].permission):
        raise PermissionDenied(_("You do not have permission to do this."))
    language = translation.get_language() or settings.LANGUAGE_CODE
    job = Job.objects.create(kind=kind, requested_by=actor, params={**params, "language": language}, total=total)
    job_id = job.pk
    transaction.on_commit(lambda: _enqueue(job_id))
    return job


def _enqueue(job_id) -> None:
    from config.celery import enqueue
    from referrals.tasks import job_execute_task

    enqueue(job_execute_task, str(job_id))


def ledger_verify_start(*, actor) -> Job:
    """Check every consent's hash chain and every checkpoint (database and files), as
    ``manage.py verify_ledger`` does, in the background."""
    return _start(actor=actor, kind=Job.Kind.VERIFY_LEDGER, params={}, total=0)


def evidence_export_start(*, actor, applicants: list[Applicant]) -> Job:
    """Export the evidence bundle of each applicant (each export recorded in their ledger once)
    into one file for the requester: the bundle itself for one applicant, a ZIP for several."""
    _check_count(len(applicants), EXPORT_LIMIT, _("Choose at least one applicant."))
    ids = [str(applicant.pk) for applicant in applicants]
    return _start(actor=actor, kind=Job.Kind.EXPORT_EVIDENCE, params={"applicants": ids}, total=len(ids))


def referrals_retry_start(*, actor, referrals: list[Referral]) -> Job:
    """Retry each referral under ``referral_retry``'s rules, checked again for each when its turn
    comes; the result says how many went back in the queue and why the others did not."""
    _check_count(len(referrals), RETRY_LIMIT, _("Choose at least one referral."))
    ids = [str(referral.pk) for referral in referrals]
    return _start(actor=actor, kind=Job.Kind.RETRY_REFERRALS, params={"referrals": ids}, total=len(ids))


def _check_count(count: int, limit: int, empty_message: str) -> None:
    if not count:
        raise ValidationError(empty_message)
    if count > limit:
        raise ValidationError(_("Choose at most %(limit)d at a time.") % {"limit": limit})


# --- running --------------------------------------------------------------------------------------
def job_execute(job_id) -> Job | None:
    """Run (or resume) the job: claim it as a new attempt, run its kind, record the outcome.
    A job already finished is left alone (a duplicate message)."""
    job = _claim(job_id)
    if job is None or job.status != Job.Status.RUNNING:
        return job
    kind = KINDS[job.kind]
    with translation.override(job.params.get("language") or settings.LANGUAGE_CODE):
        if job.attempts > MAX_ATTEMPTS:
            return _fail(
                job,
                _("Stopped after %(count)d attempts: the worker running it was lost each time.")
                % {"count": MAX_ATTEMPTS},
            )
        if not job.requested_by.has_perm(kind.permission):
            return _fail(job, _("%(user)s may no longer do this.") % {"user": job.requested_by.get_username()})
        try:
            result, file = kind.run(job)
        except Superseded:
            log.info("job_superseded", job=str(job.pk), attempt=job.attempts)
            return job
        except SoftTimeLimitExceeded:
            return _fail(job, _("It took longer than a worker may run; start it again, perhaps for fewer items."))
        except (ValidationError, PermissionDenied) as exc:
            return _fail(job, _reason(exc))
        except Exception as exc:
            _fail(job, f"{type(exc).__name__}: {exc}")
            log.exception("job_failed", job=str(job.pk), kind=job.kind)
            raise
    now = timezone.now()
    Job.objects.filter(pk=job.pk, attempts=job.attempts).update(
        status=Job.Status.DONE, result=result, file=file, finished_at=now, updated_at=now
    )
    log.info("job_done", job=str(job.pk), kind=job.kind, attempt=job.attempts)
    job.refresh_from_db()
    return job


def _claim(job_id) -> Job | None:
    with transaction.atomic():
        job = Job.objects.select_for_update(of=("self",)).select_related("requested_by").filter(pk=job_id).first()
        if job is None or job.finished:
            return job
        job.status, job.attempts, job.updated_at = Job.Status.RUNNING, job.attempts + 1, timezone.now()
        job.save(update_fields=["status", "attempts", "updated_at"])
    return job


def _progress(job: Job, **fields) -> None:
    """How far the job has got (one write per chunk); a later attempt owning the job stops this one."""
    if not Job.objects.filter(pk=job.pk, attempts=job.attempts, status=Job.Status.RUNNING).update(
        updated_at=timezone.now(), **fields
    ):
        raise Superseded


def _fail(job: Job, error: str) -> Job:
    now = timezone.now()
    Job.objects.filter(pk=job.pk, attempts=job.attempts).update(
        status=Job.Status.FAILED, error=error[:500], finished_at=now, updated_at=now
    )
    shutil.rmtree(job_folder(job), ignore_errors=True)  # nothing half-made is kept (or downloadable)
    log.warning("job_failed", job=str(job.pk), kind=job.kind, error=error[:200])
    job.refresh_from_db()
    return job


def _reason(exc: ValidationError | PermissionDenied) -> str:
    if isinstance(exc, PermissionDenied):
        return str(exc) or _("You do not have permission to do this.")
    return " ".join(exc.messages)


# --- the kinds ------------------------------------------------------------------------------------
def _verify_ledger(job: Job) -> tuple[dict, str]:
    """Read-only, so a new attempt simply starts over."""
    total = ConsentEvent.objects.count() + LedgerCheckpoint.objects.count()
    _progress(job, done=0, total=total)

    def chunk_done(report: LedgerReport) -> None:
        done = report.events + report.checkpoints
        _progress(job, done=done, total=max(total, done))  # events appended meanwhile are read too

    report = ledger_verify_chunked(
        on_chunk=chunk_done,
        consents_per_chunk=VERIFY_CONSENTS_PER_CHUNK,
        checkpoints_per_chunk=VERIFY_CHECKPOINTS_PER_CHUNK,
    )
    result = {
        "ok": report.ok,
        "consents": report.consents,
        "events": report.events,
        "checkpoints": report.checkpoints,
        "problem_count": len(report.problems),
        "problems": report.problems[:PROBLEMS_KEPT],
    }
    return result, ""


def _export_evidence(job: Job) -> tuple[dict, str]:
    ids = job.params["applicants"]
    folder = job_folder(job)
    folder.mkdir(parents=True, exist_ok=True)
    result = job.result or {"exported": [], "not_exported": []}
    for start in range(job.done, len(ids), EXPORT_CHUNK):
        chunk = ids[start : start + EXPORT_CHUNK]
        applicants = Applicant.objects.in_bulk(chunk)
        # Exported by an earlier attempt of this job after its last progress write: not again.
        already = {
            str(applicant_id)
            for applicant_id in ConsentEvent.objects.filter(
                type=ConsentEvent.Type.EVIDENCE_EXPORTED, consent__applicant_id__in=chunk, payload__job=str(job.pk)
            ).values_list("consent__applicant_id", flat=True)
        }
        for applicant_id in chunk:
            applicant = applicants.get(uuid.UUID(applicant_id))
            if applicant is None:
                result["not_exported"].append({"id": applicant_id, "label": "", "why": _("It no longer exists.")})
                continue
            path = folder / bundle_file_name(applicant)
            if not (applicant_id in already and path.exists()):
                try:
                    evidence_export(
                        actor=job.requested_by,
                        applicant=applicant,
                        job=str(job.pk),
                        store=lambda bundle, path=path: _write_json(path, bundle),
                    )
                except ValidationError as exc:
                    result["not_exported"].append(
                        {"id": applicant_id, "label": applicant.external_id, "why": _reason(exc)}
                    )
                    continue
            result["exported"].append({"id": applicant_id, "label": applicant.external_id, "file": path.name})
        _progress(job, done=start + len(chunk), result=result)
    return result, _package(job, folder, [item["file"] for item in result["exported"]])


def bundle_file_name(applicant: Applicant) -> str:
    safe = UNSAFE_IN_FILE_NAME.sub("_", applicant.external_id)
    return f"evidence-{safe}.json" if safe == applicant.external_id else f"evidence-{safe}-{applicant.pk.hex[:8]}.json"


def _write_json(path: Path, bundle: dict) -> None:
    _write_atomically(path, json.dumps(bundle, ensure_ascii=False, indent=2).encode("utf-8"))


def _write_atomically(path: Path, data: bytes) -> None:
    """A reader (or a later attempt) sees the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _package(job: Job, folder: Path, names: list[str]) -> str:
    """One bundle is downloaded as it is; several go into one ZIP."""
    if len(names) <= 1:
        return names[0] if names else ""
    name = f"evidence-{len(names)}-applicants-{timezone.localdate():%Y%m%d}.zip"
    tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member in names:
            archive.write(folder / member, arcname=member)
    os.replace(tmp, folder / name)
    return name


def _retry_referrals(job: Job) -> tuple[dict, str]:
    ids = job.params["referrals"]
    result = job.result or {"requeued": 0, "requeued_items": [], "refused": []}
    for start in range(job.done, len(ids), RETRY_CHUNK):
        chunk = ids[start : start + RETRY_CHUNK]
        with transaction.atomic():
            referrals = Referral.objects.select_related("partner").in_bulk(chunk)
            for referral_id in chunk:
                referral = referrals.get(uuid.UUID(referral_id))
                if referral is None:
                    _refused(result, [referral_id, referral_id[:8]], _("It no longer exists."))
                    continue
                item = [referral_id, f"{referral.partner.code} {referral_id[:8]}"]
                try:
                    referral_retry(actor=job.requested_by, referral=referral)
                except ValidationError as exc:
                    _refused(result, item, _reason(exc))
                else:
                    result["requeued"] += 1
                    if len(result["requeued_items"]) < EXAMPLES_KEPT:
                        result["requeued_items"].append(item)
            _progress(job, done=start + len(chunk), result=result)
    return result, ""


def _refused(result: dict, item: list[str], why: str) -> None:
    """Refusals grouped by their reason, each with a count and the first few referrals."""
    group = next((g for g in result["refused"] if g["why"] == why), None)
    if group is None:
        group = {"why": why, "count": 0, "items": []}
        result["refused"].append(group)
    group["count"] += 1
    if len(group["items"]) < EXAMPLES_KEPT:
        group["items"].append(item)


KINDS: dict[str, JobKind] = {
    Job.Kind.VERIFY_LEDGER: JobKind("referrals.verify_ledger", shared=True, run=_verify_ledger),
    Job.Kind.EXPORT_EVIDENCE: JobKind("referrals.export_evidence", shared=False, run=_export_evidence),
    Job.Kind.RETRY_REFERRALS: JobKind("referrals.retry_referral", shared=True, run=_retry_referrals),
}


# --- the sweep ------------------------------------------------------------------------------------
def jobs_sweep(*, now: datetime.datetime | None = None) -> dict:
    """Queue again the jobs that stopped moving — their message was lost, or their worker died and
    the broker has not redelivered it yet: no progress for longer than a task may run, so no worker
    is still on them. And delete export files kept longer than ``SPILLWAY_JOB_FILE_DAYS``."""
    now = now or timezone.now()
    stalled_before = now - datetime.timedelta(seconds=settings.SPILLWAY_LONG_TASK_TIME_LIMIT + 60)
    requeued = 0
    for job_id in list(
        Job.objects.filter(status__in=Job.ACTIVE, updated_at__lt=stalled_before).values_list("pk", flat=True)[:500]
    ):
        # Claimed first (a conditional update), so two sweeps do not both queue it.
        if Job.objects.filter(pk=job_id, status__in=Job.ACTIVE, updated_at__lt=stalled_before).update(updated_at=now):
            log.warning("job_requeued", job=str(job_id))
            transaction.on_commit(lambda job_id=job_id: _enqueue(job_id))
            requeued += 1
    expired = Job.objects.filter(
        finished_at__lt=now - datetime.timedelta(days=settings.SPILLWAY_JOB_FILE_DAYS)
    ).exclude(file="")
    deleted = 0
    for job in list(expired[:500]):
        shutil.rmtree(job_folder(job), ignore_errors=True)
        deleted += Job.objects.filter(pk=job.pk).update(file="")
    return {"requeued": requeued, "files_deleted": deleted}
