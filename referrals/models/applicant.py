"""A declined applicant, as the origination system sent them."""

from __future__ import annotations

import datetime
import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from config.crypto import EncryptedTextField
from config.masking import mask_name, mask_national_id, mask_phone


class Applicant(models.Model):
    """Someone the lender declined or could not serve, pushed by the origination system.

    Name, ID number and phone are encrypted at rest; exact search goes through the blind indexes.
    The lender's own credit data (``credit_grade``, ``decline_reasons``) is for routing only and
    is never sent to a partner.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    external_id = models.CharField(_("external id"), max_length=64, unique=True)
    name = EncryptedTextField(_("name"))
    national_id = EncryptedTextField(_("national ID number"))
    phone = EncryptedTextField(_("phone"))
    national_id_index = models.CharField(_("ID number blind index"), max_length=64, db_index=True, editable=False)
    phone_index = models.CharField(_("phone blind index"), max_length=64, db_index=True, editable=False)
    birth_date = models.DateField(_("birth date"))
    province = models.CharField(_("province"), max_length=6)
    city = models.CharField(_("city"), max_length=6, blank=True)
    requested_amount = models.DecimalField(_("requested amount"), max_digits=14, decimal_places=2)
    requested_term_months = models.PositiveSmallIntegerField(_("requested term (months)"))
    expected_apr = models.DecimalField(_("expected APR"), max_digits=6, decimal_places=4, null=True, blank=True)
    monthly_income = models.DecimalField(_("monthly income"), max_digits=14, decimal_places=2, null=True, blank=True)
    credit_grade = models.CharField(_("credit grade"), max_length=2, blank=True)
    decline_reasons = models.JSONField(_("decline reasons"), default=list)
    declined_at = models.DateTimeField(_("declined at"))
    request_sha256 = models.CharField(
        _("request hash"), max_length=64, editable=False, help_text=_("SHA-256 of the intake request (idempotency).")
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", verbose_name=_("created by")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("applicant")
        verbose_name_plural = _("applicants")
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["created_at", "id"], name="applicant_created_idx")
        ]  # the changelists' default ordering, with its tie-break: deep pages scan keys only
        permissions = [
            ("reveal_pii", _("Can reveal personal data (with a stated reason; recorded)")),
            ("export_evidence", _("Can export an applicant's evidence bundle")),
        ]

    def __str__(self) -> str:
        return f"{self.external_id} {self.name_masked}"

    @property
    def name_masked(self) -> str:
        return mask_name(self.name)

    @property
    def phone_masked(self) -> str:
        return mask_phone(self.phone)

    @property
    def national_id_masked(self) -> str:
        return mask_national_id(self.national_id)

    def age_on(self, day: datetime.date) -> int:
        """Completed years on ``day`` (the ID number's birth date)."""
        years = day.year - self.birth_date.year
        if (day.month, day.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return years
