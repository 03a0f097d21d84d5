"""Separate consent (单独同意, PIPL art. 23) and its append-only, hash-chained ledger."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField, transition

from partners.models import Partner
from referrals.models.applicant import Applicant

DATA_CATEGORIES = ("identity", "contact", "location", "loan_request", "income")
PURPOSES = ("loan_referral", "reclaim_offer")


TEXT_CODE_VALIDATOR = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{1,63}$",
    _("2–64 characters: lower-case letters, digits, “.”, “_” and “-”, starting with a letter or digit."),
)


class ConsentText(models.Model):
    """One wording of the consent shown to applicants. Immutable: a new wording is a new code."""

    code = models.CharField(_("code"), max_length=64, unique=True, validators=[TEXT_CODE_VALIDATOR])
    language = models.CharField(_("language"), max_length=16, default="zh-hans")
    body = models.TextField(_("text"))
    sha256 = models.CharField(_("SHA-256"), max_length=64, editable=False)
    validity_days = models.PositiveIntegerField(_("validity (days)"))
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("created by")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("consent text")
        verbose_name_plural = _("consent texts")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["language", "created_at"], name="consent_text_language_idx")]

    def __str__(self) -> str:
        return self.code


class Consent(models.Model):
    """An applicant's separate consent to give their data to the named partners, for the named
    purposes and data categories, until it expires or is withdrawn."""

    class Channel(models.TextChoices):
        APP = "app", _("App")
        H5 = "h5", _("H5 page")
        CALL_CENTER = "call_center", _("Call centre")
        BRANCH = "branch", _("Branch")

    class Status(models.TextChoices):
        GRANTED = "granted", _("Granted")
        WITHDRAWN = "withdrawn", _("Withdrawn")
        EXPIRED = "expired", _("Expired")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    applicant = models.ForeignKey(
        Applicant, on_delete=models.PROTECT, related_name="consents", verbose_name=_("applicant")
    )
    text = models.ForeignKey(
        ConsentText, on_delete=models.PROTECT, related_name="consents", verbose_name=_("consent text")
    )
    text_sha256 = models.CharField(_("text SHA-256"), max_length=64)
    partners = models.ManyToManyField(
        Partner, through="ConsentRecipient", related_name="consents", verbose_name=_("named partners")
    )
    data_categories = models.JSONField(_("data categories"))
    purposes = models.JSONField(_("purposes"))
    channel = models.CharField(_("channel"), max_length=16, choices=Channel.choices)
    granted_at = models.DateTimeField(_("granted at"))
    ip = models.GenericIPAddressField(_("IP address"))
    device_id = models.CharField(_("device id"), max_length=128, blank=True)
    evidence_sha256 = models.CharField(_("evidence SHA-256"), max_length=64)
    expires_at = models.DateTimeField(_("expires at"), db_index=True)
    status = FSMField(_("status"), max_length=16, choices=Status.choices, default=Status.GRANTED, db_index=True)
    withdrawn_at = models.DateTimeField(_("withdrawn at"), null=True, blank=True)
    withdrawal_channel = models.CharField(_("withdrawal channel"), max_length=16, blank=True)
    withdrawal_reason = models.TextField(_("withdrawal reason"), blank=True)
    expired_at = models.DateTimeField(_("expired at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("consent")
        verbose_name_plural = _("consents")
        ordering = ["-created_at"]
        permissions = [("withdraw_consent", _("Can withdraw a consent on the applicant's behalf"))]
        indexes = [
            models.Index(
                fields=["created_at", "id"], name="consent_created_idx"
            ),  # the changelists' default ordering, with its tie-break: deep pages scan keys only
            models.Index(fields=["status", "expires_at"], name="consent_expiry_idx"),
            models.Index(fields=["channel", "created_at"], name="consent_channel_idx"),  # the changelist's filter
        ]

    def __str__(self) -> str:
        return f"{self.text.code} {self.get_status_display()}"

    def covers(self, category: str) -> bool:
        return category in (self.data_categories or [])

    # An expired consent can still be withdrawn: the applicant's word is recorded all the same.
    @transition(field=status, source=[Status.GRANTED, Status.EXPIRED], target=Status.WITHDRAWN)
    def withdraw(self) -> None:
        """The applicant took their consent back: nothing more is sent under it."""

    @transition(field=status, source=Status.GRANTED, target=Status.EXPIRED)
    def expire(self) -> None:
        """The consent ran out: nothing more is sent under it."""


class ConsentRecipient(models.Model):
    """A partner named in a consent, with the name and contact details disclosed to the applicant
    at the time (PIPL art. 23 requires telling them who receives their data and how to reach them)."""

    consent = models.ForeignKey(Consent, on_delete=models.PROTECT, related_name="recipients")
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="+")
    disclosed_name = models.CharField(_("name disclosed"), max_length=200)
    disclosed_contact_email = models.EmailField(_("contact email disclosed"))
    disclosed_contact_phone = models.CharField(_("contact phone disclosed"), max_length=32)

    class Meta:
        verbose_name = _("named partner")
        verbose_name_plural = _("named partners")
        constraints = [models.UniqueConstraint(fields=["consent", "partner"], name="consent_recipient_unique")]

    def __str__(self) -> str:
        return self.disclosed_name


class ConsentEvent(models.Model):
    """One entry in a consent's ledger: granted, withdrawn, expired, each provision of data, each
    reveal and export. Append-only (database triggers refuse UPDATE and DELETE); each event's hash
    covers the previous one's, so every consent is a hash chain, and checkpoints seal all events
    into Merkle roots written outside the database."""

    class Type(models.TextChoices):
        GRANTED = "granted", _("Granted")
        WITHDRAWN = "withdrawn", _("Withdrawn")
        EXPIRED = "expired", _("Expired")
        PROBE_SENT = "probe_sent", _("Probe sent")
        APPLICATION_SENT = "application_sent", _("Application sent")
        WITHDRAWAL_NOTICE_SENT = "withdrawal_notice_sent", _("Withdrawal notice sent")
        WITHDRAWAL_ACKNOWLEDGED = "withdrawal_acknowledged", _("Withdrawal acknowledged")
        RECLAIM_NOTICE_SENT = "reclaim_notice_sent", _("Reclaim notice sent")
        PII_REVEALED = "pii_revealed", _("Personal data revealed")
        EVIDENCE_EXPORTED = "evidence_exported", _("Evidence exported")

    id = models.BigAutoField(primary_key=True)
    consent = models.ForeignKey(Consent, on_delete=models.PROTECT, related_name="events", verbose_name=_("consent"))
    seq = models.PositiveIntegerField(_("sequence"))
    type = models.CharField(_("type"), max_length=32, choices=Type.choices)
    occurred_at = models.DateTimeField(_("occurred at"))
    payload = models.JSONField(_("payload"), default=dict)
    prev_hash = models.CharField(_("previous hash"), max_length=64)
    hash = models.CharField(_("hash"), max_length=64)
    recorded_at = models.DateTimeField(_("recorded at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("consent ledger event")
        verbose_name_plural = _("consent ledger events")
        ordering = ["consent_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["consent", "seq"], name="consent_event_unique_seq")]
        indexes = [models.Index(fields=["type", "id"], name="consent_event_type_idx")]  # the ledger screen's filter

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"


class LedgerCheckpoint(models.Model):
    """A seal over every ledger event since the previous checkpoint: their RFC 6962 Merkle root,
    also written as a file to storage nobody in the app can rewrite (SPILLWAY_CHECKPOINT_DIR)."""

    id = models.BigAutoField(primary_key=True)
    first_event_id = models.BigIntegerField(_("first event"))
    last_event_id = models.BigIntegerField(_("last event"))
    event_count = models.PositiveIntegerField(_("events"))
    root = models.CharField(_("Merkle root"), max_length=64)
    previous_root = models.CharField(_("previous root"), max_length=64)
    created_at = models.DateTimeField(_("created at"), db_index=True)

    class Meta:
        verbose_name = _("ledger checkpoint")
        verbose_name_plural = _("ledger checkpoints")
        ordering = ["-id"]
        permissions = [("verify_ledger", _("Can verify the consent ledger"))]

    def __str__(self) -> str:
        return f"#{self.pk} {self.root[:12]}…"
