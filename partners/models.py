"""Partners on the approved list (名单制) and the versioned contracts that govern every referral."""

from __future__ import annotations

import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField, transition
from simple_history.models import HistoricalRecords
from stdnum.cn import uscc

from config.crypto import EncryptedTextField
from partners import terms


def validate_credit_code(value: str) -> None:
    """Unified social credit code (统一社会信用代码), check character per GB 32100-2015."""
    if not uscc.is_valid(value):
        raise ValidationError(
            _("“%(value)s” is not a valid unified social credit code (18 characters, GB 32100-2015 check character)."),
            params={"value": value},
            code="invalid_credit_code",
        )


class Partner(models.Model):
    """A partner lender that may receive referred applicants — only while ``active``.

    Being on this list is the first gate of every provision of personal data: a partner also needs
    an approved contract in force and must be named in the applicant's consent.
    """

    class LicenseType(models.TextChoices):
        BANK = "bank", _("Bank")
        CONSUMER_FINANCE = "consumer_finance", _("Consumer finance company")
        MICROLOAN = "microloan", _("Microloan company")
        OTHER = "other", _("Other")

    class Status(models.TextChoices):
        ONBOARDING = "onboarding", _("Onboarding")
        ACTIVE = "active", _("Active")
        SUSPENDED = "suspended", _("Suspended")
        OFFBOARDED = "offboarded", _("Offboarded")

    class PhoneHash(models.TextChoices):
        HMAC_SHA256 = "hmac_sha256", _("HMAC-SHA256 (keyed)")
        SHA256 = "sha256", _("SHA-256 (weak: reversible by enumeration)")
        MD5 = "md5", _("MD5 (weak: reversible by enumeration)")

    WEAK_PHONE_HASHES = {PhoneHash.SHA256, PhoneHash.MD5}

    code = models.CharField(
        _("code"),
        max_length=32,
        unique=True,
        validators=[RegexValidator(r"^[A-Z0-9_]{2,32}$", _("2–32 characters of A–Z, 0–9 and _."))],
    )
    name = models.CharField(_("name"), max_length=200)
    license_type = models.CharField(_("license type"), max_length=32, choices=LicenseType.choices)
    credit_code = models.CharField(_("unified social credit code"), max_length=18, validators=[validate_credit_code])
    contact_email = models.EmailField(_("contact email"))
    contact_phone = models.CharField(
        _("contact phone"),
        max_length=32,
        validators=[RegexValidator(r"^[0-9+\-() ]{5,32}$", _("A telephone number."))],
    )
    status = FSMField(_("status"), max_length=16, choices=Status.choices, default=Status.ONBOARDING)
    api_base_url = models.URLField(_("API base URL"), max_length=300)
    api_secret = EncryptedTextField(_("API secret"), help_text=_("Write-only; stored encrypted."))
    api_secret_changed_at = models.DateTimeField(_("API secret changed at"), null=True, blank=True)
    phone_hash = models.CharField(
        _("phone hash"), max_length=16, choices=PhoneHash.choices, default=PhoneHash.HMAC_SHA256
    )
    timeout_ms = models.PositiveIntegerField(
        _("timeout (ms)"), default=3000, validators=[MinValueValidator(100), MaxValueValidator(60000)]
    )
    max_requests_per_second = models.PositiveIntegerField(
        _("max requests per second"), default=50, validators=[MinValueValidator(1), MaxValueValidator(10000)]
    )
    connector = models.CharField(
        _("connector"),
        max_length=64,
        default="protocol_v1",
        help_text=_("The connector class that speaks this partner's API."),
    )
    paused = models.BooleanField(
        _("paused"), default=False, help_text=_("Operations pause: nothing is sent; queued work waits.")
    )
    pause_reason = models.CharField(_("pause reason"), max_length=200, blank=True)
    pia_reference = models.CharField(_("PIA reference"), max_length=64, blank=True)
    pia_completed_on = models.DateField(_("PIA completed on"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    # The secret never goes into history tables (old secrets would linger there, unrotated).
    history = HistoricalRecords(excluded_fields=["api_secret"])

    class Meta:
        verbose_name = _("partner")
        verbose_name_plural = _("partners")
        ordering = ["code"]
        permissions = [
            ("change_partner_status", _("Can activate, suspend or offboard partners")),
            ("operate_partner", _("Can pause or resume a partner and reset its circuit breaker")),
        ]
        # The changelist's filters (the code, its ordering, is unique).
        indexes = [
            models.Index(fields=["status"], name="partner_status_idx"),
            models.Index(fields=["license_type"], name="partner_license_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"

    @property
    def has_pia(self) -> bool:
        return bool(self.pia_reference and self.pia_completed_on)

    @property
    def weak_phone_hash(self) -> bool:
        return self.phone_hash in self.WEAK_PHONE_HASHES

    def clean(self) -> None:
        if self.pia_completed_on and self.pia_completed_on > datetime.date.today():
            raise ValidationError({"pia_completed_on": _("A PIA cannot be completed in the future.")})

    # --- status transitions (the service checks who may do them) ---------------------------
    def pia_on_record(self) -> bool:
        return self.has_pia

    @transition(
        field=status, source=[Status.ONBOARDING, Status.SUSPENDED], target=Status.ACTIVE, conditions=[pia_on_record]
    )
    def activate(self) -> None:
        """Put the partner on the active list (needs a PIA, PIPL art. 55–56)."""

    @transition(field=status, source=Status.ACTIVE, target=Status.SUSPENDED)
    def suspend(self) -> None:
        """Stop all sending to the partner for now."""

    @transition(field=status, source=[Status.ONBOARDING, Status.ACTIVE, Status.SUSPENDED], target=Status.OFFBOARDED)
    def offboard(self) -> None:
        """Take the partner off the list for good."""


class Contract(models.Model):
    """One version of the terms under which a partner receives referrals.

    Drafted by a partnership manager, approved by someone else (four-eyes). A referral keeps the
    version it was routed under for life, so fees are always computed under the terms in force then.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", _("Draft")
        PENDING_APPROVAL = "pending_approval", _("Pending approval")
        ACTIVE = "active", _("Active")
        SUPERSEDED = "superseded", _("Superseded")
        TERMINATED = "terminated", _("Terminated")

    APPROVED_STATUSES = (Status.ACTIVE, Status.SUPERSEDED, Status.TERMINATED)

    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="contracts", verbose_name=_("partner"))
    version = models.PositiveIntegerField(_("version"), editable=False)
    status = FSMField(_("status"), max_length=20, choices=Status.choices, default=Status.DRAFT)
    effective_from = models.DateField(_("effective from"))
    effective_to = models.DateField(_("effective to"), null=True, blank=True)
    priority = models.IntegerField(_("priority"), default=0, help_text=_("Higher wins when several partners accept."))
    eligibility = models.JSONField(_("eligibility"), default=dict, blank=True)
    data_fields = models.JSONField(_("data fields"), default=list)
    daily_cap = models.PositiveIntegerField(_("daily cap"), null=True, blank=True)
    monthly_cap = models.PositiveIntegerField(_("monthly cap"), null=True, blank=True)
    dedupe_days = models.PositiveIntegerField(_("dedupe window (days)"), default=30)
    fees = models.JSONField(_("fees"), default=dict)
    clawback = models.JSONField(_("clawback"), default=dict)
    reclaim = models.JSONField(_("reclaim"), default=dict)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("created by")
    )
    last_edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("last edited by")
    )
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
    rejection_reason = models.TextField(_("rejection reason"), blank=True)
    terminated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        null=True,
        blank=True,
        verbose_name=_("terminated by"),
    )
    terminated_at = models.DateTimeField(_("terminated at"), null=True, blank=True)
    termination_reason = models.TextField(_("termination reason"), blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    history = HistoricalRecords()

    class Meta:
        verbose_name = _("contract version")
        verbose_name_plural = _("contract versions")
        ordering = ["partner__code", "-version"]
        permissions = [
            ("submit_contract", _("Can submit contract versions for approval")),
            ("approve_contract", _("Can approve or reject contract versions")),
            ("terminate_contract", _("Can terminate contract versions")),
        ]
        constraints = [
            models.UniqueConstraint(fields=["partner", "version"], name="contract_unique_version"),
            # At most one active version per partner; the previous one is superseded on approval.
            models.UniqueConstraint(
                fields=["partner"], condition=Q(status="active"), name="contract_one_active_per_partner"
            ),
            models.CheckConstraint(
                condition=Q(effective_to__isnull=True) | Q(effective_to__gte=models.F("effective_from")),
                name="contract_effective_range",
            ),
        ]
        indexes = [
            models.Index(fields=["partner", "status", "effective_from"], name="contract_in_force_idx"),
            models.Index(fields=["status", "created_at"], name="contract_status_idx"),  # the changelist's filter
        ]

    def __str__(self) -> str:
        return f"{self.partner.code} v{self.version} ({self.get_status_display()})"

    def clean(self) -> None:
        errors: dict[str, list] = {}
        if self.effective_to and self.effective_from and self.effective_to < self.effective_from:
            errors["effective_to"] = [_("Must not be before effective_from.")]
        for name in terms.TERM_SERIALIZERS:
            try:
                setattr(self, name, terms.normalise_terms(name, getattr(self, name)))
            except ValidationError as exc:
                errors.update(exc.message_dict)
        try:
            self.data_fields = terms.normalise_data_fields(self.data_fields)
        except ValidationError as exc:
            errors.update(exc.message_dict)
        if self.daily_cap is not None and self.monthly_cap is not None and self.daily_cap > self.monthly_cap:
            errors["monthly_cap"] = [_("Must not be less than the daily cap.")]
        if errors:
            raise ValidationError(errors)

    @property
    def is_approved(self) -> bool:
        return self.status in self.APPROVED_STATUSES

    # --- lifecycle (services call these; they check who may) -------------------------------
    @transition(field=status, source=Status.DRAFT, target=Status.PENDING_APPROVAL)
    def submit(self) -> None:
        """Ask compliance to approve this version."""

    @transition(field=status, source=Status.PENDING_APPROVAL, target=Status.ACTIVE)
    def approve(self) -> None:
        """Put this version in force from its ``effective_from``."""

    @transition(field=status, source=Status.PENDING_APPROVAL, target=Status.DRAFT)
    def reject(self) -> None:
        """Send this version back to its drafter, with a reason."""

    @transition(field=status, source=Status.ACTIVE, target=Status.SUPERSEDED)
    def supersede(self) -> None:
        """A newer version was approved; this one ends the day before it starts."""

    @transition(field=status, source=[Status.ACTIVE, Status.SUPERSEDED], target=Status.TERMINATED)
    def terminate(self) -> None:
        """End this version at once."""


class PartnerCircuit(models.Model):
    """The circuit breaker of one partner: after repeated failures its calls wait (deferred, not
    failed) until a cool-down passes; then one trial call decides whether it closes again."""

    partner = models.OneToOneField(Partner, on_delete=models.CASCADE, primary_key=True, related_name="circuit")
    consecutive_failures = models.PositiveIntegerField(_("consecutive failures"), default=0)
    open_until = models.DateTimeField(_("open until"), null=True, blank=True)
    opened_at = models.DateTimeField(_("opened at"), null=True, blank=True)
    last_error = models.CharField(_("last error"), max_length=300, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("circuit breaker")
        verbose_name_plural = _("circuit breakers")

    def __str__(self) -> str:
        return f"{self.partner_id}: {self.state}"

    @property
    def state(self) -> str:
        from django.utils import timezone

        if self.open_until is None:
            return "closed"
        return "open" if self.open_until > timezone.now() else "half_open"
