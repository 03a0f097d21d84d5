"""The back office for partners: the approved list (名单制)."""

from __future__ import annotations

import dataclasses
import zoneinfo
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from simple_history.admin import SimpleHistoryAdmin

from config.admin_tools import EMPTY, LargeTableAdminMixin, ServiceAdminMixin, ServiceModelForm, error_text
from partners import services
from partners.admin.contract import TransitionForm
from partners.models import Partner, PartnerCircuit

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


# --- operations: pause, resume, reset the circuit breaker ------------------------------------------
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


def _circuit(partner: Partner) -> PartnerCircuit | None:
    """From the changelist's and the page's join (no query); ``None`` before the first failure."""
    try:
        return partner.circuit
    except PartnerCircuit.DoesNotExist:
        return None


def _time(moment) -> str:
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S") if moment else EMPTY


@dataclasses.dataclass(frozen=True)
class PartnerOperation:
    """One operations button on a partner: when it applies and the service it calls."""

    name: str
    label: Any
    applies: Callable[[Partner], bool]
    run: Callable[..., Any]  # run(actor=, partner=, reason=)
    done: Any  # the success message, with %(partner)s
    explanation: Any
    needs_reason: bool = False


def _circuit_tripped(partner: Partner) -> bool:
    circuit = _circuit(partner)
    return circuit is not None and (circuit.open_until is not None or circuit.consecutive_failures > 0)


PARTNER_OPERATIONS = {
    op.name: op
    for op in (
        PartnerOperation(
            "pause",
            _("Pause"),
            lambda p: not p.paused,
            lambda *, actor, partner, reason: services.partner_pause(actor=actor, partner=partner, reason=reason),
            _("%(partner)s is paused: nothing is sent to it until it is resumed."),
            _("Nothing is sent to this partner while it is paused; its queued work waits and goes once resumed."),
            needs_reason=True,
        ),
        PartnerOperation(
            "resume",
            _("Resume"),
            lambda p: p.paused,
            lambda *, actor, partner, reason: services.partner_resume(actor=actor, partner=partner),
            _("%(partner)s is resumed."),
            _("Sending to this partner starts again; its waiting work goes at the next sweep."),
        ),
        PartnerOperation(
            "reset_circuit",
            _("Reset circuit"),
            _circuit_tripped,
            lambda *, actor, partner, reason: services.partner_circuit_reset(actor=actor, partner=partner),
            _("The circuit breaker of %(partner)s is closed."),
            _(
                "Closes the circuit breaker now (after the partner says it is fixed): calls that wait for it go at "
                "the next sweep. If the partner still fails, the circuit opens again."
            ),
        ),
    )
}


@admin.register(Partner)
class PartnerAdmin(LargeTableAdminMixin, ServiceAdminMixin, SimpleHistoryAdmin):
    form = PartnerAdminForm
    change_form_template = "admin/referrals/operations/change_form.html"
    operation_template = "admin/referrals/operations/confirm.html"
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

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("circuit")

    def get_list_display(self, request):
        columns = [*self.list_display[:-1], "paused_display"]
        if request.user.has_perm("partners.view_partnercircuit"):
            columns.append("circuit_display")
        return (*columns, self.list_display[-1])

    def get_fieldsets(self, request, obj=None):
        fieldsets = self._base_fieldsets(request, obj)
        if obj is not None and request.user.has_perm("partners.view_partnercircuit"):
            fieldsets = (*fieldsets, (_("Operations"), {"fields": ("paused_display", "circuit_detail")}))
        return fieldsets

    def _base_fieldsets(self, request, obj=None):
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
        readonly += ["paused_display", "circuit_detail"]  # operations' view: changed only by their buttons
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

    # --- operations: pause, resume, reset circuit (partners.operate_partner) ----------------------
    @admin.display(description=_("paused"), ordering="paused")
    def paused_display(self, partner: Partner) -> SafeString:
        if not partner.paused:
            return format_html("{}", EMPTY)
        return format_html(
            '<strong class="partner-paused" title="{}" style="color:#ba2121">{}</strong> {}',
            partner.pause_reason,
            _("paused"),
            partner.pause_reason,
        )

    @admin.display(description=_("circuit"))
    def circuit_display(self, partner: Partner) -> SafeString:
        circuit = _circuit(partner)
        state = circuit.state if circuit else "closed"
        if state == "open":
            text = _("open until %(time)s") % {"time": _time(circuit.open_until)}
        elif state == "half_open":
            text = _("half-open (one trial call)")
        else:
            text = _("closed")
        failures = circuit.consecutive_failures if circuit else 0
        return format_html(
            '<span class="circuit circuit-{}">{}</span>{}',
            state,
            text,
            format_html(" · {}", _("%(n)d failures in a row") % {"n": failures}) if failures else "",
        )

    @admin.display(description=_("circuit breaker"))
    def circuit_detail(self, partner: Partner) -> SafeString:
        circuit = _circuit(partner)
        return format_html(
            "{}<br>{}: {}<br>{}: {}<br>{}: {}<br>{}: {}",
            self.circuit_display(partner),
            _("consecutive failures"),
            circuit.consecutive_failures if circuit else 0,
            _("last error"),
            (circuit.last_error if circuit else "") or EMPTY,
            _("opened at"),
            _time(circuit.opened_at if circuit else None),
            _("open until"),
            _time(circuit.open_until if circuit else None),
        )

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/operate/<slug:name>/",
                self.admin_site.admin_view(self.operation_view),
                name="{}_{}_operate".format(*info),
            ),
            *super().get_urls(),
        ]

    def _url(self, name: str, partner: Partner, *args) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=[partner.pk, *args],
            current_app=self.admin_site.name,
        )

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and request.user.has_perm("partners.operate_partner"):
            context["operation_buttons"] = [
                {"name": op.name, "label": op.label, "url": self._url("operate", obj, op.name)}
                for op in PARTNER_OPERATIONS.values()
                if op.applies(obj)
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def operation_view(self, request, object_id, name):
        """Confirm pause (with a reason), resume or reset circuit, then call the service."""
        operation = PARTNER_OPERATIONS.get(name)
        if operation is None:
            raise Http404
        partner = self.get_object(request, unquote(object_id))
        if partner is None:
            raise Http404
        if not (self.has_view_permission(request, partner) and request.user.has_perm("partners.operate_partner")):
            raise PermissionDenied
        change_url = self._url("change", partner)
        if not operation.applies(partner):
            self.message_user(
                request,
                _("%(partner)s: %(operation)s does not apply now.")
                % {"partner": partner.code, "operation": operation.label},
                messages.ERROR,
            )
            return HttpResponseRedirect(change_url)
        form = TransitionForm(request.POST if request.method == "POST" else None, needs_reason=operation.needs_reason)
        if request.method == "POST" and form.is_valid():
            try:
                operation.run(actor=request.user, partner=partner, reason=form.cleaned_data.get("reason", ""))
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{partner.code}: {error_text(exc)}", messages.ERROR)
            else:
                self.message_user(request, operation.done % {"partner": partner.code}, messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": f"{operation.label}: {partner.code}",
            "opts": self.opts,
            "original": partner,
            "operation": operation,
            "form": form,
            "change_url": change_url,
            "facts": [
                (_("partner"), str(partner)),
                (_("paused"), partner.pause_reason if partner.paused else _("no")),
                (_("circuit"), self.circuit_display(partner)),
            ],
        }
        return TemplateResponse(request, self.operation_template, context)
