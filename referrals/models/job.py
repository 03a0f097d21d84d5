"""Long work started from the admin — verifying the ledger, exporting evidence, retrying many
referrals — done by a Celery task that records its progress here, so the page that started it can
show a progress bar and, at the end, the result (and, for an export, the file to download)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Job(models.Model):
    """One piece of background work someone asked for, with how far it has got."""

    class Kind(models.TextChoices):
        VERIFY_LEDGER = "verify_ledger", _("Ledger verification")
        EXPORT_EVIDENCE = "export_evidence", _("Evidence export")
        RETRY_REFERRALS = "retry_referrals", _("Retry of failed referrals")

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(_("kind"), max_length=20, choices=Kind.choices)
    status = models.CharField(_("status"), max_length=10, choices=Status.choices, default=Status.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("requested by")
    )
    params = models.JSONField(_("what to do"), default=dict, blank=True)
    done = models.PositiveIntegerField(_("done"), default=0)
    total = models.PositiveIntegerField(_("total"), default=0)
    result = models.JSONField(_("result"), default=dict, blank=True)
    file = models.CharField(
        _("file"), max_length=300, blank=True, help_text=_("Under SPILLWAY_JOB_DIR; downloaded by the requester only.")
    )
    error = models.CharField(_("error"), max_length=500, blank=True)
    attempts = models.PositiveSmallIntegerField(
        _("attempts"), default=0, help_text=_("How many times a worker has started it (a lost worker's job resumes).")
    )
    created_at = models.DateTimeField(_("requested at"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(
        _("last progress at"), default=timezone.now, help_text=_("A job that stops moving is queued again.")
    )
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("background job")
        verbose_name_plural = _("background jobs")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "updated_at"], name="job_status_idx")]  # the sweep

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {str(self.pk)[:8]}"

    @property
    def finished(self) -> bool:
        return self.status not in self.ACTIVE

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        if not self.total:
            return 0
        return max(0, min(100, self.done * 100 // self.total))
