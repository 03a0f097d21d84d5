"""Reclaims (回捞): taking a borrower who repays well at a partner back, under the contract and the
consent, after compliance review.

A nightly scan turns each qualifying loan into a ``candidate`` with the evidence that qualified it;
compliance approves (four-eyes when someone else proposed it); the partner is told through the
outbox; its acknowledgement makes the ``reclaim_fee`` line and hands the borrower back to
origination. Every rule is checked again at each step and immediately before the notice leaves:
a rule that stopped holding ``blocks`` the case and nothing is sent.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy
from django_fsm import FSMField, transition

from partners.models import Contract, Partner
from referrals.models.consent import Consent
from referrals.models.loan import Loan
from referrals.models.referral import Referral


class Reclaim(models.Model):
    class Status(models.TextChoices):
        CANDIDATE = "candidate", pgettext_lazy("reclaim status", "Candidate")
        UNDER_REVIEW = "under_review", pgettext_lazy("reclaim status", "Under review")
        APPROVED = "approved", pgettext_lazy("reclaim status", "Approved")
        NOTIFIED = "notified", pgettext_lazy("reclaim status", "Partner notified")
        ACKNOWLEDGED = "acknowledged", pgettext_lazy("reclaim status", "Acknowledged")
        RECLAIMED = "reclaimed", pgettext_lazy("reclaim status", "Reclaimed")
        REJECTED = "rejected", pgettext_lazy("reclaim status", "Rejected")
        BLOCKED = "blocked", pgettext_lazy("reclaim status", "Blocked")

    # Before the notice leaves, every rule is re-checked and a failing one blocks the case.
    OPEN = (Status.CANDIDATE, Status.UNDER_REVIEW, Status.APPROVED)
    IN_REVIEW = (Status.CANDIDATE, Status.UNDER_REVIEW)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    loan = models.OneToOneField(Loan, on_delete=models.PROTECT, related_name="reclaim", verbose_name=_("loan"))
    referral = models.ForeignKey(
        Referral, on_delete=models.PROTECT, related_name="reclaims", verbose_name=_("referral")
    )
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="reclaims", verbose_name=_("partner"))
    contract = models.ForeignKey(
        Contract, on_delete=models.PROTECT, related_name="+", verbose_name=_("contract version")
    )
    consent = models.ForeignKey(Consent, on_delete=models.PROTECT, related_name="reclaims", verbose_name=_("consent"))
    status = FSMField(_("status"), max_length=16, choices=Status.choices, default=Status.CANDIDATE, protected=False)
    status_reason = models.CharField(_("status reason"), max_length=300, blank=True)
    evidence = models.JSONField(_("evidence"), default=dict, help_text=_("What qualified the loan when it was found."))
    proposed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        verbose_name=_("proposed by"),
    )  # fmt: skip
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        verbose_name=_("approved or rejected by"),
    )  # fmt: skip
    decided_at = models.DateTimeField(_("decided at"), null=True, blank=True)
    effective_date = models.DateField(_("effective date"), null=True, blank=True)
    notified_at = models.DateTimeField(_("notified at"), null=True, blank=True)
    acknowledged_at = models.DateTimeField(_("acknowledged at"), null=True, blank=True)
    reclaimed_at = models.DateTimeField(_("reclaimed at"), null=True, blank=True)
    created_at = models.DateTimeField(_("found at"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("reclaim")
        verbose_name_plural = _("reclaims")
        ordering = ["created_at"]
        permissions = [
            ("propose_reclaim", _("Can propose reclaims for compliance review")),
            ("approve_reclaim", _("Can approve or reject reclaims")),
            ("receive_reclaimed_pii", _("Can receive reclaimed borrowers' personal data (each read recorded)")),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"], name="reclaim_status_idx"),
            models.Index(fields=["partner", "status"], name="reclaim_partner_idx"),
            models.Index(fields=["acknowledged_at"], name="reclaim_acknowledged_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.partner_id}:{self.loan_id} {self.status}"

    # --- lifecycle (services decide who and when) ------------------------------------------------
    @transition(field=status, source=Status.CANDIDATE, target=Status.UNDER_REVIEW)
    def propose(self):
        pass

    @transition(field=status, source=IN_REVIEW, target=Status.APPROVED)
    def approve(self):
        pass

    @transition(field=status, source=OPEN, target=Status.REJECTED)
    def reject(self):
        pass

    @transition(field=status, source=(*OPEN, Status.NOTIFIED), target=Status.BLOCKED)
    def block(self):
        """A rule stopped holding before the partner acknowledged (a notice whose sending failed
        is re-checked before it is sent again)."""

    @transition(field=status, source=Status.APPROVED, target=Status.NOTIFIED)
    def notify(self):
        pass

    @transition(field=status, source=Status.NOTIFIED, target=Status.ACKNOWLEDGED)
    def acknowledge(self):
        pass

    @transition(field=status, source=Status.ACKNOWLEDGED, target=Status.RECLAIMED)
    def hand_back(self):
        pass


class ReclaimTransition(models.Model):
    """A reclaim's timeline: who (or the system) moved it, when, and why."""

    reclaim = models.ForeignKey(Reclaim, on_delete=models.CASCADE, related_name="transitions")
    source = models.CharField(_("from"), max_length=16, blank=True)
    target = models.CharField(_("to"), max_length=16)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        verbose_name=_("by"),
    )  # fmt: skip
    at = models.DateTimeField(_("at"), auto_now_add=True)
    note = models.TextField(_("note"), blank=True)

    class Meta:
        verbose_name = _("reclaim transition")
        verbose_name_plural = _("reclaim transitions")
        ordering = ["reclaim_id", "at", "id"]

    def __str__(self) -> str:
        return f"{self.source or '∅'} → {self.target}"


class ReclaimNearMiss(models.Model):
    """A loan that passed every reclaim rule but one, as of the last scan (replaced by each scan)."""

    loan = models.OneToOneField(Loan, on_delete=models.CASCADE, related_name="reclaim_near_miss")
    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="+")
    rule = models.CharField(_("failing rule"), max_length=40)
    detail = models.CharField(_("detail"), max_length=300)
    checked_at = models.DateTimeField(_("checked at"))

    class Meta:
        verbose_name = _("reclaim near miss")
        verbose_name_plural = _("reclaim near misses")
        ordering = ["rule", "loan_id"]
        indexes = [models.Index(fields=["rule", "loan"], name="near_miss_rule_idx")]  # ordering and filter

    def __str__(self) -> str:
        return f"{self.loan_id}: {self.rule}"
