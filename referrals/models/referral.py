"""Referrals: one applicant, one partner, one contract version — and why each partner was or was not picked."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField

from partners.models import Contract, Partner
from referrals.models.applicant import Applicant
from referrals.models.consent import Consent


class Referral(models.Model):
    """Forwarding one applicant to one partner under one contract version (导流).

    Created ``queued`` by routing; moves through probe and application as the partner answers.
    The contract version is fixed for life: fees are always computed under the terms it was
    routed under.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        PROBING = "probing", _("Probing")
        PROBE_ACCEPTED = "probe_accepted", _("Probe accepted")
        PROBE_DECLINED = "probe_declined", _("Probe declined")
        SUBMITTING = "submitting", _("Submitting")
        SUBMITTED = "submitted", _("Submitted")
        REJECTED = "rejected", _("Rejected")
        NOT_SELECTED = "not_selected", _("Not selected")
        RETURNED = "returned", _("Returned")
        CANCELLED = "cancelled", _("Cancelled")
        FAILED = "failed", _("Failed")

    # Still competing for the applicant: may yet be probed or receive the application.
    OPEN = (Status.QUEUED, Status.PROBING, Status.PROBE_ACCEPTED, Status.SUBMITTING)
    FINAL = (
        Status.PROBE_DECLINED, Status.SUBMITTED, Status.REJECTED, Status.NOT_SELECTED, Status.RETURNED,
        Status.CANCELLED, Status.FAILED,
    )  # fmt: skip

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    applicant = models.ForeignKey(
        Applicant, on_delete=models.PROTECT, related_name="referrals", verbose_name=_("applicant")
    )
    consent = models.ForeignKey(Consent, on_delete=models.PROTECT, related_name="referrals", verbose_name=_("consent"))
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="referrals", verbose_name=_("partner"))
    contract = models.ForeignKey(
        Contract, on_delete=models.PROTECT, related_name="referrals", verbose_name=_("contract version")
    )
    status = FSMField(_("status"), max_length=20, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.CharField(_("status reason"), max_length=200, blank=True)
    priority = models.IntegerField(_("priority"))
    expected_fee = models.DecimalField(_("expected fee"), max_digits=14, decimal_places=2)
    application_id = models.CharField(_("partner's application id"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    probe_answered_at = models.DateTimeField(_("probe answered at"), null=True, blank=True)
    submitted_at = models.DateTimeField(_("application sent at"), null=True, blank=True)
    accepted_at = models.DateTimeField(
        _("accepted at"), null=True, blank=True, help_text=_("When the partner accepted the application.")
    )
    returned_at = models.DateTimeField(_("returned at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("referral")
        verbose_name_plural = _("referrals")
        ordering = ["-created_at"]
        permissions = [("retry_referral", _("Can retry or cancel referrals"))]
        constraints = [
            models.UniqueConstraint(fields=["applicant", "partner"], name="referral_one_per_applicant_partner")
        ]
        indexes = [
            models.Index(
                fields=["created_at", "id"], name="referral_created_idx"
            ),  # the changelists' default ordering, with its tie-break: deep pages scan keys only
            models.Index(fields=["status", "created_at", "id"], name="referral_status_created_idx"),
            models.Index(fields=["partner", "status", "created_at"], name="referral_partner_status_idx"),
            models.Index(fields=["partner", "accepted_at"], name="referral_partner_accepted_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.partner.code} {self.get_status_display()}"


class RoutingDecision(models.Model):
    """Why a partner named in the consent did or did not become a referral for this applicant —
    so compliance can answer “why did they (not) get my data?”."""

    class Outcome(models.TextChoices):
        REFERRED = "referred", _("Referred")
        EXCLUDED = "excluded", _("Excluded")

    applicant = models.ForeignKey(Applicant, on_delete=models.PROTECT, related_name="routing_decisions")
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="+")
    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    outcome = models.CharField(_("outcome"), max_length=10, choices=Outcome.choices)
    reason = models.CharField(_("reason"), max_length=40)
    detail = models.CharField(_("detail"), max_length=300, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("routing decision")
        verbose_name_plural = _("routing decisions")
        ordering = ["applicant_id", "partner_id"]
        indexes = [models.Index(fields=["applicant", "partner"], name="routing_applicant_partner_idx")]

    def __str__(self) -> str:
        return f"{self.partner_id} {self.outcome}: {self.reason}"


class CapCounter(models.Model):
    """How many referrals a contract has taken in a day or a month (Asia/Shanghai).

    Routing increments it with a conditional UPDATE (``count < cap``), so two workers can never
    both take the last slot.
    """

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=10)  # "2026-11-29" or "2026-11"
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["contract", "period"], name="cap_counter_unique")]

    def __str__(self) -> str:
        return f"{self.contract_id} {self.period}: {self.count}"
