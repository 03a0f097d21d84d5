"""What partners report back: signed callback events, loans, repayments, overdue notices."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from partners.models import Partner
from referrals.models.referral import Referral


class CallbackEvent(models.Model):
    """A signed event from a partner, stored as received (unique per partner and ``event_id``) and
    then applied. Events may come late, twice or out of order; applying is monotonic."""

    class Status(models.TextChoices):
        RECEIVED = "received", _("Received")
        PROCESSED = "processed", _("Processed")
        IGNORED = "ignored", _("Ignored")

    id = models.BigAutoField(primary_key=True)
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="callbacks")
    event_id = models.CharField(_("event id"), max_length=100)
    type = models.CharField(_("type"), max_length=40)
    referral = models.ForeignKey(Referral, on_delete=models.PROTECT, related_name="callbacks")
    occurred_at = models.DateTimeField(_("occurred at"))
    data = models.JSONField(_("data"), default=dict)
    body_sha256 = models.CharField(_("body SHA-256"), max_length=64)
    status = models.CharField(_("status"), max_length=10, choices=Status.choices, default=Status.RECEIVED)
    note = models.CharField(_("note"), max_length=200, blank=True)
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)
    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)

    class Meta:
        verbose_name = _("partner callback")
        verbose_name_plural = _("partner callbacks")
        ordering = ["-received_at"]
        constraints = [models.UniqueConstraint(fields=["partner", "event_id"], name="callback_unique_event")]
        indexes = [
            models.Index(
                fields=["received_at", "id"], name="callback_received_idx"
            ),  # the changelists' default ordering, with its tie-break: deep pages scan keys only
            models.Index(fields=["status", "received_at"], name="callback_status_idx"),
            models.Index(fields=["partner", "type", "occurred_at"], name="callback_type_time_idx"),
            models.Index(fields=["type", "received_at"], name="callback_type_idx"),  # the changelist's filter
        ]

    def __str__(self) -> str:
        return f"{self.partner_id} {self.type} {self.event_id}"


class Loan(models.Model):
    """A loan the partner granted to a referred applicant, as its callbacks describe it."""

    class Status(models.TextChoices):
        APPROVED = "approved", _("Approved")
        DISBURSED = "disbursed", _("Disbursed")
        CLOSED = "closed", _("Closed")
        DEFAULTED = "defaulted", _("Defaulted")

    # Later states win whatever order the callbacks arrive in.
    RANK = {Status.APPROVED: 1, Status.DISBURSED: 2, Status.CLOSED: 3, Status.DEFAULTED: 3}

    id = models.BigAutoField(primary_key=True)
    referral = models.ForeignKey(Referral, on_delete=models.PROTECT, related_name="loans", verbose_name=_("referral"))
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="loans", verbose_name=_("partner"))
    loan_id = models.CharField(_("partner's loan id"), max_length=64)
    status = models.CharField(_("status"), max_length=10, choices=Status.choices, default=Status.APPROVED)
    credit_limit = models.DecimalField(_("credit limit"), max_digits=14, decimal_places=2, null=True, blank=True)
    principal = models.DecimalField(_("principal"), max_digits=14, decimal_places=2, null=True, blank=True)
    apr = models.DecimalField(_("APR"), max_digits=6, decimal_places=4, null=True, blank=True)
    term_months = models.PositiveSmallIntegerField(_("term (months)"), null=True, blank=True)
    first_due_date = models.DateField(_("first due date"), null=True, blank=True)
    approved_at = models.DateTimeField(_("approved at"), null=True, blank=True)
    disbursed_at = models.DateTimeField(_("disbursed at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("closed or defaulted at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("loan")
        verbose_name_plural = _("loans")
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["partner", "loan_id"], name="loan_unique_partner_id")]
        indexes = [
            models.Index(fields=["partner", "approved_at"], name="loan_approved_idx"),
            models.Index(fields=["partner", "disbursed_at"], name="loan_disbursed_idx"),
            models.Index(fields=["status", "created_at"], name="loan_status_idx"),  # the changelist's filter
        ]

    def __str__(self) -> str:
        return f"{self.partner_id}:{self.loan_id}"


class Repayment(models.Model):
    """One instalment paid, as the partner reported it (interest share is computed on ``interest``)."""

    loan = models.ForeignKey(Loan, on_delete=models.PROTECT, related_name="repayments", verbose_name=_("loan"))
    installment = models.PositiveSmallIntegerField(_("instalment"))
    due_date = models.DateField(_("due date"))
    paid_date = models.DateField(_("paid date"), db_index=True)
    principal = models.DecimalField(_("principal"), max_digits=14, decimal_places=2)
    interest = models.DecimalField(_("interest"), max_digits=14, decimal_places=2)
    event = models.ForeignKey(CallbackEvent, on_delete=models.PROTECT, related_name="+")

    class Meta:
        verbose_name = _("repayment")
        verbose_name_plural = _("repayments")
        ordering = ["loan_id", "installment"]
        constraints = [models.UniqueConstraint(fields=["loan", "installment"], name="repayment_unique_installment")]

    def __str__(self) -> str:
        return f"{self.loan} #{self.installment}"


class LoanOverdue(models.Model):
    """A missed instalment as reported (the first one, past the contract's window, is an FPD)."""

    loan = models.ForeignKey(Loan, on_delete=models.PROTECT, related_name="overdues", verbose_name=_("loan"))
    installment = models.PositiveSmallIntegerField(_("instalment"))
    due_date = models.DateField(_("due date"))
    days_past_due = models.PositiveSmallIntegerField(_("days past due"))
    occurred_at = models.DateTimeField(_("occurred at"))
    event = models.ForeignKey(CallbackEvent, on_delete=models.PROTECT, related_name="+")

    class Meta:
        verbose_name = _("overdue notice")
        verbose_name_plural = _("overdue notices")
        ordering = ["loan_id", "installment", "days_past_due"]
        constraints = [
            models.UniqueConstraint(fields=["loan", "installment", "days_past_due"], name="overdue_unique_report")
        ]

    def __str__(self) -> str:
        return f"{self.loan} #{self.installment} +{self.days_past_due}d"
