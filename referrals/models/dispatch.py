"""The outbox: every call to a partner is a row before it is a request."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from partners.models import Partner
from referrals.models.consent import Consent
from referrals.models.referral import Referral


class Dispatch(models.Model):
    """One outbound call to a partner (probe, application, withdrawal notice, reclaim notice), with
    its retries. Written before the call; a worker claims it (conditional update + lease) before
    calling out; a sweeper re-enqueues rows whose message was lost or whose worker died."""

    class Kind(models.TextChoices):
        PROBE = "probe", _("Probe")
        APPLICATION = "application", _("Application")
        WITHDRAWAL_NOTICE = "withdrawal_notice", _("Withdrawal notice")
        RECLAIM_NOTICE = "reclaim_notice", _("Reclaim notice")

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        IN_FLIGHT = "in_flight", _("In flight")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(_("kind"), max_length=20, choices=Kind.choices)
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="dispatches", verbose_name=_("partner"))
    consent = models.ForeignKey(Consent, on_delete=models.PROTECT, related_name="dispatches", verbose_name=_("consent"))
    referral = models.ForeignKey(
        Referral, on_delete=models.PROTECT, related_name="dispatches", null=True, blank=True, verbose_name=_("referral")
    )
    subject_id = models.CharField(
        _("subject"), max_length=64, blank=True, help_text=_("The reclaim id, for reclaim notices.")
    )
    status = models.CharField(_("status"), max_length=12, choices=Status.choices, default=Status.PENDING)
    idempotency_key = models.CharField(_("idempotency key"), max_length=120)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"))
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    enqueued_at = models.DateTimeField(_("enqueued at"), null=True, blank=True)
    last_error = models.CharField(_("last error"), max_length=300, blank=True)
    result = models.JSONField(_("result"), default=dict, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("dispatch")
        verbose_name_plural = _("dispatches")
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["kind", "idempotency_key"], name="dispatch_unique_key")]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="dispatch_due_idx"),
            models.Index(fields=["status", "lease_expires_at"], name="dispatch_lease_idx"),
            models.Index(fields=["consent", "status"], name="dispatch_consent_idx"),
            models.Index(fields=["partner", "status", "created_at"], name="dispatch_partner_idx"),
            models.Index(fields=["kind", "created_at"], name="dispatch_kind_idx"),  # the changelist's filter
        ]

    def __str__(self) -> str:
        return f"{self.kind} → {self.partner_id} ({self.status})"


class DispatchAttempt(models.Model):
    """One try of a dispatch: when, how long, what came back. No personal data."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", _("Success")
        TRANSIENT = "transient", _("Transient error")
        PERMANENT = "permanent", _("Permanent error")
        REFUSED = "refused", _("Refused before sending")
        DEFERRED = "deferred", _("Deferred (circuit open)")

    dispatch = models.ForeignKey(Dispatch, on_delete=models.CASCADE, related_name="attempt_rows")
    number = models.PositiveSmallIntegerField(_("attempt"))
    started_at = models.DateTimeField(_("started at"))
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)
    http_status = models.PositiveSmallIntegerField(_("HTTP status"), null=True, blank=True)
    outcome = models.CharField(_("outcome"), max_length=10, choices=Outcome.choices)
    error = models.CharField(_("error"), max_length=300, blank=True)

    class Meta:
        verbose_name = _("dispatch attempt")
        verbose_name_plural = _("dispatch attempts")
        ordering = ["dispatch_id", "number"]
        indexes = [models.Index(fields=["started_at"], name="attempt_started_idx")]

    def __str__(self) -> str:
        return f"#{self.number} {self.outcome}"
