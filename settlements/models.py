"""Monthly statements per partner, the runs that compute them, and reconciliations against the
partner's own figures.

A statement's lines are computed by the fee rules (``settlements/rules.py``) under the contract
version each referral was routed under. While a statement is a draft a run may replace its lines;
once approved (``approved_at`` set) nothing changes it, and events that arrive later for its month
land in the next open month as lines marked late.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy
from django_fsm import RETURN_VALUE, FSMField, transition

from partners.models import Contract, Partner
from referrals.models import CallbackEvent, Loan, Referral

period_validator = RegexValidator(r"^\d{4}-(0[1-9]|1[0-2])$", _("A period is a month written YYYY-MM."))


class LineType(models.TextChoices):
    APPLICATION_FEE = "application_fee", _("Application fee")
    APPROVAL_FEE = "approval_fee", _("Approval fee")
    DISBURSEMENT_FEE = "disbursement_fee", _("Disbursement fee")
    INTEREST_SHARE = "interest_share", _("Interest share")
    CLAWBACK_FPD = "clawback_fpd", _("First-payment-default clawback")
    CLAWBACK_RETURNED = "clawback_returned", _("Returned-application clawback")
    RECLAIM_FEE = "reclaim_fee", _("Reclaim fee")


class SettlementRun(models.Model):
    """One computation of a month's statements for every partner, done by a Celery task."""

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    period = models.CharField(_("period"), max_length=7, validators=[period_validator])
    status = models.CharField(_("status"), max_length=10, choices=Status.choices, default=Status.RUNNING)
    progress = models.FloatField(_("progress"), default=0.0)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("started by")
    )
    created_at = models.DateTimeField(_("started at"), auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    updated_at = models.DateTimeField(
        _("last progress at"), default=timezone.now, help_text=_("A running run that stops moving is re-queued.")
    )
    error = models.CharField(_("error"), max_length=500, blank=True)
    summary = models.JSONField(_("summary"), default=list, blank=True)

    class Meta:
        verbose_name = _("settlement run")
        verbose_name_plural = _("settlement runs")
        ordering = ["-created_at"]
        permissions = [("run_settlement", _("Can run settlements"))]
        indexes = [models.Index(fields=["status", "created_at"], name="settlement_run_status_idx")]

    def __str__(self) -> str:
        return f"{self.period} {self.get_status_display()}"


class Statement(models.Model):
    """What one partner owes for one month (or is owed: a negative total is a credit note)."""

    class Status(models.TextChoices):
        DRAFT = "draft", pgettext_lazy("statement status", "Draft")
        UNDER_REVIEW = "under_review", pgettext_lazy("statement status", "Under review")
        APPROVED = "approved", pgettext_lazy("statement status", "Approved")
        ISSUED = "issued", pgettext_lazy("statement status", "Issued")
        PAID = "paid", pgettext_lazy("statement status", "Paid")
        DISPUTED = "disputed", pgettext_lazy("statement status", "Disputed")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="statements", verbose_name=_("partner"))
    period = models.CharField(_("period"), max_length=7, validators=[period_validator])
    status = FSMField(_("status"), max_length=16, choices=Status.choices, default=Status.DRAFT, protected=False)
    net = models.DecimalField(_("net"), max_digits=16, decimal_places=2, default=0)
    vat = models.DecimalField(_("VAT"), max_digits=16, decimal_places=2, default=0)
    gross = models.DecimalField(_("gross"), max_digits=16, decimal_places=2, default=0)
    line_count = models.PositiveIntegerField(_("lines"), default=0)
    run = models.ForeignKey(
        SettlementRun,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="statements",
        verbose_name=_("run"),
    )
    computed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("computed by")
    )
    computed_at = models.DateTimeField(_("computed at"))
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        null=True,
        blank=True,
        verbose_name=_("submitted by"),
    )
    submitted_at = models.DateTimeField(_("submitted at"), null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        null=True,
        blank=True,
        verbose_name=_("approved by"),
    )
    approved_at = models.DateTimeField(_("approved at"), null=True, blank=True)
    approval_note = models.TextField(_("approval note"), blank=True)
    issued_at = models.DateTimeField(_("issued at"), null=True, blank=True)
    paid_at = models.DateTimeField(_("paid at"), null=True, blank=True)

    class Meta:
        verbose_name = _("statement")
        verbose_name_plural = _("statements")
        ordering = ["-period", "partner__code"]
        permissions = [
            ("submit_statement", _("Can submit statements for review")),
            ("approve_statement", _("Can approve statements")),
            ("issue_statement", _("Can issue statements and record payments or disputes")),
            ("reconcile_statement", _("Can reconcile statements with partner figures")),
            ("export_statement", _("Can export statements")),
        ]
        constraints = [models.UniqueConstraint(fields=["partner", "period"], name="statement_one_per_partner_month")]
        indexes = [
            models.Index(fields=["period", "partner"], name="statement_period_idx"),
            models.Index(fields=["status", "period"], name="statement_status_idx"),  # the changelist's filter
        ]

    def __str__(self) -> str:
        return f"{self.partner.code} {self.period}"

    @property
    def frozen(self) -> bool:
        """Approved once: its lines and totals never change again."""
        return self.approved_at is not None

    # --- lifecycle (services check who may do each step) ---------------------------------------
    @transition(field=status, source=Status.DRAFT, target=Status.UNDER_REVIEW)
    def submit(self):
        pass

    @transition(field=status, source=Status.UNDER_REVIEW, target=Status.DRAFT)
    def send_back(self):
        pass

    @transition(field=status, source=Status.UNDER_REVIEW, target=Status.APPROVED)
    def approve(self):
        pass

    @transition(field=status, source=Status.APPROVED, target=Status.ISSUED)
    def issue(self):
        pass

    @transition(field=status, source=Status.ISSUED, target=Status.PAID)
    def mark_paid(self):
        pass

    @transition(field=status, source=[Status.UNDER_REVIEW, Status.APPROVED, Status.ISSUED], target=Status.DISPUTED)
    def dispute(self):
        pass

    @transition(field=status, source=Status.DISPUTED, target=Status.DRAFT, conditions=[lambda s: not s.frozen])
    def reopen(self):
        """A dispute raised during review sends the statement back to be corrected and re-run."""

    @transition(
        field=status,
        source=Status.DISPUTED,
        target=RETURN_VALUE(Status.APPROVED, Status.ISSUED),
        conditions=[lambda s: s.frozen],
    )
    def resolve(self):
        """A dispute about an approved statement is settled without changing it (a correction, if
        any, is a line of a later month)."""
        return self.Status.ISSUED if self.issued_at else self.Status.APPROVED


class StatementTransition(models.Model):
    """Who moved a statement from one status to another, when, and why."""

    statement = models.ForeignKey(Statement, on_delete=models.CASCADE, related_name="transitions")
    source = models.CharField(_("from"), max_length=16)
    target = models.CharField(_("to"), max_length=16)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("by"))
    at = models.DateTimeField(_("at"), auto_now_add=True)
    note = models.TextField(_("note"), blank=True)

    class Meta:
        verbose_name = _("statement transition")
        verbose_name_plural = _("statement transitions")
        ordering = ["statement_id", "at", "id"]

    def __str__(self) -> str:
        return f"{self.source} → {self.target}"


class StatementLine(models.Model):
    """One fee, share or clawback, pointing at what it comes from.

    ``key`` names the source (``"disbursement_fee:<loan>"``) and is unique across all statements:
    a fee can be counted once only, whatever runs and late events happen.
    """

    statement = models.ForeignKey(Statement, on_delete=models.CASCADE, related_name="lines")
    line_type = models.CharField(_("line type"), max_length=24, choices=LineType.choices)
    key = models.CharField(_("source key"), max_length=80, unique=True)
    amount = models.DecimalField(_("amount"), max_digits=14, decimal_places=2)
    vat_rate = models.DecimalField(_("VAT rate"), max_digits=6, decimal_places=4)
    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="+", verbose_name=_("contract"))
    referral = models.ForeignKey(Referral, on_delete=models.PROTECT, related_name="+", verbose_name=_("referral"))
    loan = models.ForeignKey(Loan, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    event = models.ForeignKey(CallbackEvent, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    occurred_at = models.DateTimeField(_("occurred at"))
    late = models.BooleanField(_("late"), default=False, help_text=_("Belongs to an earlier, approved month."))
    basis = models.CharField(_("basis"), max_length=200, blank=True)

    class Meta:
        verbose_name = _("statement line")
        verbose_name_plural = _("statement lines")
        ordering = ["statement_id", "line_type", "occurred_at", "id"]
        indexes = [models.Index(fields=["statement", "line_type", "occurred_at"], name="line_statement_type_idx")]

    def __str__(self) -> str:
        return f"{self.line_type} {self.amount}"


class Reconciliation(models.Model):
    """The partner's own figures for a statement, compared line by line."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    statement = models.ForeignKey(Statement, on_delete=models.CASCADE, related_name="reconciliations")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(_("uploaded at"), auto_now_add=True)
    filename = models.CharField(_("file name"), max_length=200, blank=True)
    sha256 = models.CharField(_("file SHA-256"), max_length=64)
    row_count = models.PositiveIntegerField(_("rows"))
    statement_computed_at = models.DateTimeField(_("statement computed at"))
    ours_total = models.DecimalField(_("our total"), max_digits=16, decimal_places=2)
    theirs_total = models.DecimalField(_("their total"), max_digits=16, decimal_places=2)
    only_ours = models.PositiveIntegerField(_("only ours"), default=0)
    only_theirs = models.PositiveIntegerField(_("only theirs"), default=0)
    amounts_differ = models.PositiveIntegerField(_("amounts differ"), default=0)
    total_difference = models.DecimalField(
        _("total difference"), max_digits=16, decimal_places=2, help_text=_("Their total minus ours.")
    )

    class Meta:
        verbose_name = _("reconciliation")
        verbose_name_plural = _("reconciliations")
        ordering = ["statement_id", "-uploaded_at"]

    def __str__(self) -> str:
        return f"{self.statement} {self.uploaded_at:%Y-%m-%d %H:%M}"

    @property
    def differences(self) -> int:
        return self.only_ours + self.only_theirs + self.amounts_differ


class ReconciliationItem(models.Model):
    """One ``(referral, line type)`` where our figure and the partner's disagree."""

    class Kind(models.TextChoices):
        ONLY_OURS = "only_ours", _("Only on our statement")
        ONLY_THEIRS = "only_theirs", _("Only in the partner's figures")
        AMOUNT_DIFFERS = "amount_differs", _("Amounts differ")

    reconciliation = models.ForeignKey(Reconciliation, on_delete=models.CASCADE, related_name="items")
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    referral = models.ForeignKey(Referral, on_delete=models.PROTECT, related_name="+", verbose_name=_("referral"))
    line_type = models.CharField(_("line type"), max_length=24, choices=LineType.choices)
    ours = models.DecimalField(_("ours"), max_digits=14, decimal_places=2, null=True, blank=True)
    theirs = models.DecimalField(_("theirs"), max_digits=14, decimal_places=2, null=True, blank=True)
    difference = models.DecimalField(_("difference"), max_digits=14, decimal_places=2)

    class Meta:
        verbose_name = _("reconciliation difference")
        verbose_name_plural = _("reconciliation differences")
        ordering = ["reconciliation_id", "kind", "line_type", "referral_id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.line_type} {self.difference}"
