"""The back office for contract versions: drafting, the readable terms and diff, and transitions
(submit, approve, reject, terminate) that call the same services as the API."""

from __future__ import annotations

import dataclasses
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
from django.utils.safestring import SafeString
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django_fsm import can_proceed
from simple_history.admin import SimpleHistoryAdmin

from config.admin_tools import LargeTableAdminMixin, ServiceAdminMixin, ServiceModelForm, error_text
from partners import selectors, services, terms
from partners.admin.terms_display import render_terms_diff, render_terms_table
from partners.models import Contract


# --- contract transitions ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Transition:
    """One button on a contract version: the service it calls and who may press it."""

    name: str
    label: Any
    permission: str
    service: Callable[..., Contract]
    needs_reason: bool = False

    def available(self, contract: Contract) -> bool:
        return can_proceed(getattr(contract, self.name))


TRANSITIONS = {
    t.name: t
    for t in (
        Transition("submit", _("Submit for approval"), "partners.submit_contract", services.contract_submit),
        Transition("approve", _("Approve"), "partners.approve_contract", services.contract_approve),
        Transition("reject", _("Reject"), "partners.approve_contract", services.contract_reject, needs_reason=True),
        Transition(
            "terminate", _("Terminate"), "partners.terminate_contract", services.contract_terminate, needs_reason=True
        ),
    )
}


class TransitionForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), widget=forms.Textarea(attrs={"rows": 4, "cols": 80}))

    def __init__(self, *args, needs_reason: bool, **kwargs):
        super().__init__(*args, **kwargs)
        if not needs_reason:
            del self.fields["reason"]


def _label(contract: Contract) -> str:
    return f"{contract.partner.code} v{contract.version}"


# --- contract versions ----------------------------------------------------------------------------
TERM_FIELDS = (
    "effective_from",
    "effective_to",
    "priority",
    "eligibility",
    "data_fields",
    "daily_cap",
    "monthly_cap",
    "dedupe_days",
    "fees",
    "clawback",
    "reclaim",
)
WORKFLOW_FIELDS = (
    "created_by",
    "last_edited_by",
    "submitted_by",
    "submitted_at",
    "approved_by",
    "approved_at",
    "rejection_reason",
    "terminated_by",
    "terminated_at",
    "termination_reason",
    "created_at",
    "updated_at",
)


class ContractAdminForm(ServiceModelForm):
    class Meta:
        model = Contract
        fields = ("partner", *TERM_FIELDS)
        help_texts = {
            "eligibility": _(
                'JSON, e.g. {"min_amount": "1000.00", "max_amount": "200000.00", "terms_months": [3, 6, 12], '
                '"provinces": ["310000"], "min_age": 22, "max_age": 55, "credit_grades": ["B", "C"], '
                '"decline_reasons": []}. Empty lists mean “any”.'
            ),
            "data_fields": format_lazy(_("JSON list of: {fields}."), fields=", ".join(terms.DATA_FIELDS)),
            "fees": _(
                'JSON, e.g. {"application_fee": "30.00", "application_fee_tiers": [{"from_count": 1001, '
                '"fee": "25.00"}], "approval_fee": "0.00", "disbursement_rate": "0.0100", '
                '"interest_share_rate": "0.2500", "vat_rate": "0.0600"}.'
            ),
            "clawback": _('JSON, e.g. {"fpd_days": 30, "duplicate_return_hours": 48}.'),
            "reclaim": _(
                'JSON, e.g. {"allowed": true, "min_ontime_installments": 6, "fee": "200.00", "non_solicit_days": 90}.'
            ),
        }

    def save_through_service(self, *, actor, data):
        if self.instance._state.adding:
            partner = data.pop("partner")
            return services.contract_create(actor=actor, partner=partner, data=data)
        return services.contract_update(actor=actor, contract=self.instance, data=data)


@admin.register(Contract)
class ContractAdmin(LargeTableAdminMixin, ServiceAdminMixin, SimpleHistoryAdmin):
    form = ContractAdminForm
    change_form_template = "admin/partners/contract/change_form.html"
    transition_template = "admin/partners/contract/transition.html"
    list_display = (
        "partner",
        "version",
        "status",
        "effective_from",
        "effective_to",
        "priority",
        "created_by",
        "approved_by",
    )
    list_filter = ("status", "partner__license_type")
    list_select_related = ("partner", "created_by", "approved_by")
    search_fields = ("partner__code", "partner__name")
    ordering = ("-created_at",)
    history_list_display = ("status",)
    actions = ("submit_selected", "approve_selected")
    formfield_overrides = {
        models.JSONField: {"widget": forms.Textarea(attrs={"rows": 5, "cols": 100, "class": "vLargeTextField"})},
    }

    def get_queryset(self, request):
        return selectors.contract_list().order_by(*self.get_ordering(request))

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return ((None, {"fields": ("partner",)}), (_("Terms"), {"fields": TERM_FIELDS}))
        editable = self.has_change_permission(request, obj)
        return (
            (None, {"fields": ("partner", "version", "status")}),
            (_("Terms"), {"fields": ("terms_table",)}),
            (_("Changes from the previous version"), {"fields": ("terms_diff",)}),
            (
                _("Edit terms") if editable else _("Terms as stored (JSON)"),
                {"fields": TERM_FIELDS, "classes": () if editable else ("collapse",)},
            ),
            (_("Approval record"), {"fields": WORKFLOW_FIELDS}),
        )

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("partner", "version", "status", "terms_table", "terms_diff", *WORKFLOW_FIELDS)

    def has_change_permission(self, request, obj=None):
        # Only drafts are edited; an approved version changes by drafting the next one.
        if obj is not None and obj.status != Contract.Status.DRAFT:
            return False
        return super().has_change_permission(request, obj)

    @admin.display(description=_("terms"))
    def terms_table(self, contract: Contract) -> SafeString:
        return render_terms_table(contract)

    @admin.display(description=_("difference"))
    def terms_diff(self, contract: Contract) -> SafeString:
        return render_terms_diff(contract)

    # --- transitions -------------------------------------------------------------------------
    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/transition/<slug:name>/",
                self.admin_site.admin_view(self.transition_view),
                name="{}_{}_transition".format(*info),
            ),
            *super().get_urls(),
        ]

    def allowed_transitions(self, request, contract: Contract) -> list[Transition]:
        return [t for t in TRANSITIONS.values() if request.user.has_perm(t.permission) and t.available(contract)]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and not add:
            context["transition_buttons"] = [
                {"name": t.name, "label": t.label, "url": self._transition_url(obj, t.name)}
                for t in self.allowed_transitions(request, obj)
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _transition_url(self, contract: Contract, name: str) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_transition",
            args=[contract.pk, name],
            current_app=self.admin_site.name,
        )

    def _change_url(self, contract: Contract) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=[contract.pk],
            current_app=self.admin_site.name,
        )

    def transition_view(self, request, object_id, name):
        """Confirm one transition (with a reason where the rules ask for one), then call its service."""
        transition = TRANSITIONS.get(name)
        if transition is None:
            raise Http404
        contract = self.get_object(request, unquote(object_id))
        if contract is None:
            raise Http404
        if not (self.has_view_permission(request, contract) and request.user.has_perm(transition.permission)):
            raise PermissionDenied
        change_url = self._change_url(contract)
        form = TransitionForm(request.POST if request.method == "POST" else None, needs_reason=transition.needs_reason)
        if request.method == "POST" and form.is_valid():
            reason = {"reason": form.cleaned_data["reason"]} if transition.needs_reason else {}
            try:
                done = transition.service(actor=request.user, contract=contract, **reason)
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{_label(contract)}: {error_text(exc)}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    _("%(contract)s is now %(status)s.")
                    % {"contract": _label(done), "status": done.get_status_display()},
                    messages.SUCCESS,
                )
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{transition.label}: {_label(contract)}",
            "opts": self.opts,
            "original": contract,
            "transition": transition,
            "form": form,
            "change_url": change_url,
            "terms_diff": render_terms_diff(contract) if name in {"submit", "approve"} else "",
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.transition_template, context)

    # --- bulk actions --------------------------------------------------------------------------
    def has_submit_permission(self, request) -> bool:
        return request.user.has_perm("partners.submit_contract")

    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm("partners.approve_contract")

    @admin.action(description=_("Submit selected drafts for approval"), permissions=["submit"])
    def submit_selected(self, request, queryset):
        self._apply_each(request, queryset, TRANSITIONS["submit"])

    @admin.action(description=_("Approve selected versions"), permissions=["approve"])
    def approve_selected(self, request, queryset):
        self._apply_each(request, queryset, TRANSITIONS["approve"])

    def _apply_each(self, request, queryset, transition: Transition) -> None:
        """Call the service once per version; one refusal does not stop the others."""
        done: list[str] = []
        # Oldest first, so a partner's versions supersede one another in order.
        for contract in queryset.select_related("partner").order_by("partner__code", "effective_from", "version"):
            try:
                transition.service(actor=request.user, contract=contract)
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{_label(contract)}: {error_text(exc)}", messages.ERROR)
            else:
                done.append(_label(contract))
        if done:
            self.message_user(
                request,
                ngettext(
                    "%(action)s: %(count)d contract version done (%(list)s).",
                    "%(action)s: %(count)d contract versions done (%(list)s).",
                    len(done),
                )
                % {"action": transition.label, "count": len(done), "list": ", ".join(done)},
                messages.SUCCESS,
            )
