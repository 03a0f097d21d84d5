"""Read-only screens for the outbox (dispatches and their attempts), partner callbacks and loans."""

from __future__ import annotations

from django.contrib import admin
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

# What the queue summary counts: referrals still on their way, and the dead ones waiting for a person.
from config.admin_tools import EMPTY, ReadOnlyAdmin, ReadOnlyInline
from referrals.admin.display import payload_json
from referrals.admin.queues import ATTEMPTS_SHOWN, referral_link, short_id
from referrals.models import (
    CallbackEvent,
    Dispatch,
    DispatchAttempt,
    Loan,
    LoanOverdue,
    Repayment,
)
from referrals.services.callbacks import TYPES as CALLBACK_TYPES


# --- dispatches -----------------------------------------------------------------------------------
class NewestAttemptsFormSet(BaseInlineFormSet):
    def get_queryset(self):
        if not hasattr(self, "_queryset"):
            self._queryset = super().get_queryset().order_by("-started_at", "-id")[:ATTEMPTS_SHOWN]
        return self._queryset


class DispatchAttemptInline(ReadOnlyInline):
    model = DispatchAttempt
    formset = NewestAttemptsFormSet
    fields = ("number", "started_at", "duration_ms", "http_status", "outcome", "error")
    readonly_fields = fields
    verbose_name_plural = _("attempts (newest first, at most 20)")


@admin.register(Dispatch)
class DispatchAdmin(ReadOnlyAdmin):
    list_display = (
        "dispatch_id",
        "kind",
        "partner",
        "status",
        "attempts",
        "next_attempt_at",
        "last_error",
        "referral_display",
        "created_at",
    )
    list_display_links = ("dispatch_id",)
    list_filter = ("kind", "status", "partner")
    list_select_related = ("partner",)
    ordering = ("-created_at",)
    inlines = (DispatchAttemptInline,)
    fields = (
        "kind",
        "partner",
        "referral_display",
        "consent_display",
        "subject_id",
        "status",
        "idempotency_key",
        "attempts",
        "next_attempt_at",
        "lease_expires_at",
        "enqueued_at",
        "last_error",
        "result_display",
        "created_at",
        "completed_at",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("partner")

    @admin.display(description=_("dispatch"), ordering="pk")
    def dispatch_id(self, dispatch: Dispatch) -> str:
        return f"#{dispatch.pk}"

    @admin.display(description=_("referral"))
    def referral_display(self, dispatch: Dispatch) -> SafeString:
        return referral_link(dispatch.referral_id) if dispatch.referral_id else format_html("{}", EMPTY)

    @admin.display(description=_("consent"))
    def consent_display(self, dispatch: Dispatch) -> SafeString:
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:referrals_consent_change", args=[dispatch.consent_id]),
            short_id(dispatch.consent_id),
        )

    @admin.display(description=_("result"))
    def result_display(self, dispatch: Dispatch) -> SafeString:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', payload_json(dispatch.result))


# --- callbacks ------------------------------------------------------------------------------------
class CallbackTypeFilter(admin.SimpleListFilter):
    """The protocol's event types (a DISTINCT over the whole table would cost a scan per page)."""

    title = _("type")
    parameter_name = "type"

    def lookups(self, request, model_admin):
        return [(name, name) for name in CALLBACK_TYPES]

    def queryset(self, request, queryset):
        return queryset.filter(type=self.value()) if self.value() else queryset


@admin.register(CallbackEvent)
class CallbackEventAdmin(ReadOnlyAdmin):
    list_display = (
        "event_id",
        "partner",
        "type",
        "referral_display",
        "occurred_at",
        "status",
        "note",
        "received_at",
    )
    list_filter = ("partner", CallbackTypeFilter, "status")
    list_select_related = ("partner",)
    ordering = ("-received_at",)
    search_fields = ("=event_id",)
    search_help_text = _("The partner's exact event id.")
    fields = (
        "partner",
        "event_id",
        "type",
        "referral_display",
        "occurred_at",
        "status",
        "note",
        "data_display",
        "body_sha256",
        "received_at",
        "processed_at",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("partner")

    @admin.display(description=_("referral"))
    def referral_display(self, event: CallbackEvent) -> SafeString:
        return referral_link(event.referral_id)

    @admin.display(description=_("data"))
    def data_display(self, event: CallbackEvent) -> SafeString:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', payload_json(event.data))


# --- loans ----------------------------------------------------------------------------------------
class RepaymentInline(ReadOnlyInline):
    model = Repayment
    fields = ("installment", "due_date", "paid_date", "principal", "interest")
    readonly_fields = fields


class LoanOverdueInline(ReadOnlyInline):
    model = LoanOverdue
    fields = ("installment", "due_date", "days_past_due", "occurred_at")
    readonly_fields = fields


@admin.register(Loan)
class LoanAdmin(ReadOnlyAdmin):
    list_display = (
        "loan_id",
        "partner",
        "referral_display",
        "status",
        "principal",
        "apr",
        "term_months",
        "approved_at",
        "disbursed_at",
        "ended_at",
    )
    list_filter = ("status", "partner")
    list_select_related = ("partner",)
    ordering = ("-created_at",)
    search_fields = ("=loan_id",)
    search_help_text = _("The partner's exact loan id.")
    inlines = (RepaymentInline, LoanOverdueInline)
    fields = (
        "partner",
        "loan_id",
        "referral_display",
        "status",
        "credit_limit",
        "principal",
        "apr",
        "term_months",
        "first_due_date",
        "approved_at",
        "disbursed_at",
        "ended_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("partner")

    @admin.display(description=_("referral"))
    def referral_display(self, loan: Loan) -> SafeString:
        return referral_link(loan.referral_id)
