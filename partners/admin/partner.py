"""The back office for partners: the approved list (名单制)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db import models
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from simple_history.admin import SimpleHistoryAdmin

from config.admin_tools import ServiceAdminMixin, ServiceModelForm
from partners import services
from partners.models import Partner

# --- partners ---------------------------------------------------------------------------------
# A partner's API is reached over HTTPS unless its URL says otherwise (and Django 6 will assume so).
URL_FIELD = {"assume_scheme": "https"}


def _formfield(field: models.Field, **kwargs):
    if isinstance(field, models.URLField):
        kwargs = {**URL_FIELD, **kwargs}
    return field.formfield(**kwargs)


class PartnerAdminForm(ServiceModelForm):
    # Write-only: never rendered, blank on the change page means "keep the current secret".
    api_secret = forms.CharField(
        label=_("API secret"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = Partner
        formfield_callback = _formfield
        fields = (
            "code",
            "name",
            "license_type",
            "credit_code",
            "status",
            "contact_email",
            "contact_phone",
            "api_base_url",
            "api_secret",
            "phone_hash",
            "timeout_ms",
            "max_requests_per_second",
            "connector",
            "pia_reference",
            "pia_completed_on",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Keep the stored secret out of the form entirely (initial values end up in has_changed,
        # hidden-initial inputs and change messages).
        self.initial.pop("api_secret", None)
        if "api_secret" in self.fields:
            adding = self.instance._state.adding
            self.fields["api_secret"].required = adding
            self.fields["api_secret"].help_text = (
                _("Stored encrypted and never shown again.")
                if adding
                else _("Write-only. Leave blank to keep the current secret; type a new one to rotate it.")
            )

    def save_through_service(self, *, actor, data):
        if self.instance._state.adding:
            return services.partner_create(actor=actor, data=data)
        return services.partner_update(actor=actor, partner=self.instance, data=data)


@admin.register(Partner)
class PartnerAdmin(ServiceAdminMixin, SimpleHistoryAdmin):
    form = PartnerAdminForm
    list_display = ("code", "name", "license_type", "status", "pia_on_record", "phone_hash_flag", "updated_at")
    list_filter = ("status", "license_type")
    search_fields = ("code", "name")
    ordering = ("code",)
    history_list_display = ("status",)
    formfield_overrides = {models.URLField: URL_FIELD}
    fieldsets = (
        (None, {"fields": ("code", "name", "license_type", "credit_code", "status")}),
        (_("Contact"), {"fields": ("contact_email", "contact_phone")}),
        (
            _("Connection"),
            {
                "fields": (
                    "api_base_url",
                    "api_secret",
                    "api_secret_changed_at",
                    "phone_hash",
                    "timeout_ms",
                    "max_requests_per_second",
                    "connector",
                )
            },
        ),
        (
            _("Personal information impact assessment (PIPL art. 55–56)"),
            {"fields": ("pia_reference", "pia_completed_on")},
        ),
        (_("Record"), {"fields": ("created_at", "updated_at")}),
    )

    def get_fieldsets(self, request, obj=None):
        if obj is None or self.has_change_permission(request, obj):
            return self.fieldsets
        # A read-only page would print the field's value: show only whether a secret is set.
        swap = {"api_secret": "api_secret_state"}
        return [
            (name, {**options, "fields": tuple(swap.get(f, f) for f in options["fields"])})
            for name, options in self.fieldsets
        ]

    def get_readonly_fields(self, request, obj=None):
        readonly = ["api_secret_state", "api_secret_changed_at", "created_at", "updated_at"]
        if obj is not None:
            readonly.append("code")
        if not request.user.has_perm("partners.change_partner_status"):
            readonly.append("status")
        return readonly

    @admin.display(boolean=True, description=_("PIA on record"))
    def pia_on_record(self, partner: Partner) -> bool:
        return partner.has_pia

    @admin.display(description=_("phone hash"), ordering="phone_hash")
    def phone_hash_flag(self, partner: Partner) -> SafeString:
        if not partner.weak_phone_hash:
            return format_html("{}", partner.phone_hash)
        return format_html(
            '{} <strong class="phone-hash-weak" title="{}" style="color:#ba2121">⚠ {}</strong>',
            partner.phone_hash,
            _("An unkeyed hash of an 11-digit phone number can be reversed by trying every number."),
            _("weak"),
        )

    @admin.display(description=_("API secret"))
    def api_secret_state(self, partner: Partner) -> str:
        return _("set (write-only)") if partner.api_secret else _("not set")
