"""The consent ledger as tables: every event and every checkpoint, read-only (the database refuses
changes anyway; these screens do not even offer them). From the checkpoints list, those who may
verify the ledger start a verification of all of it, which runs as a background job."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from config.admin_tools import LargeTableAdminMixin
from referrals.admin.display import hash_code, payload_json, shanghai_time
from referrals.admin.jobs import job_url
from referrals.models import ConsentEvent, LedgerCheckpoint
from referrals.services.jobs import ledger_verify_start


class ReadOnlyLedgerAdmin(LargeTableAdminMixin, admin.ModelAdmin):
    """Append-only records: no add, no change, no delete, no bulk actions."""

    actions = ()
    ordering = ("-id",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ConsentEvent)
class ConsentEventAdmin(ReadOnlyLedgerAdmin):
    list_display = ("id", "consent_link", "applicant_external_id", "seq", "type", "occurred", "hash_display")
    list_filter = ("type",)
    list_select_related = ("consent__applicant",)
    search_fields = ("=consent__applicant__external_id", "=hash")
    search_help_text = _("Exact external id of the applicant, or an event's full hash.")
    fields = (
        "consent_link",
        "seq",
        "type",
        "occurred",
        "payload_display",
        "prev_hash",
        "hash",
        "recorded_at",
    )
    readonly_fields = fields

    @admin.display(description=_("consent"), ordering="consent_id")
    def consent_link(self, event: ConsentEvent) -> SafeString:
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:referrals_consent_change", args=[event.consent_id]),
            str(event.consent_id)[:8],
        )

    @admin.display(description=_("external id"), ordering="consent__applicant__external_id")
    def applicant_external_id(self, event: ConsentEvent) -> str:
        return event.consent.applicant.external_id

    @admin.display(description=_("occurred at (Asia/Shanghai)"), ordering="occurred_at")
    def occurred(self, event: ConsentEvent) -> str:
        return shanghai_time(event.occurred_at)

    @admin.display(description=_("hash"))
    def hash_display(self, event: ConsentEvent) -> SafeString:
        return hash_code(event.hash)

    @admin.display(description=_("payload"))
    def payload_display(self, event: ConsentEvent) -> SafeString:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', payload_json(event.payload))


@admin.register(LedgerCheckpoint)
class LedgerCheckpointAdmin(ReadOnlyLedgerAdmin):
    change_list_template = "admin/referrals/jobs/ledgercheckpoint_change_list.html"
    verify_template = "admin/referrals/jobs/verify_ledger.html"
    list_display = (
        "id",
        "first_event_id",
        "last_event_id",
        "event_count",
        "root_display",
        "previous_root_display",
        "created",
    )
    list_select_related = False  # no relations: one query for the page
    fields = ("id", "first_event_id", "last_event_id", "event_count", "root", "previous_root", "created_at")
    readonly_fields = fields

    @admin.display(description=_("Merkle root"))
    def root_display(self, checkpoint: LedgerCheckpoint) -> SafeString:
        return hash_code(checkpoint.root)

    @admin.display(description=_("previous root"))
    def previous_root_display(self, checkpoint: LedgerCheckpoint) -> SafeString:
        return hash_code(checkpoint.previous_root)

    @admin.display(description=_("created at (Asia/Shanghai)"), ordering="created_at")
    def created(self, checkpoint: LedgerCheckpoint) -> str:
        return shanghai_time(checkpoint.created_at)

    # --- verify the whole ledger, in the background ------------------------------------------------
    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path("verify/", self.admin_site.admin_view(self.verify_view), name="{}_{}_verify".format(*info)),
            *super().get_urls(),
        ]

    def may_verify(self, request) -> bool:
        return self.has_view_permission(request) and request.user.has_perm("referrals.verify_ledger")

    def changelist_view(self, request, extra_context=None):
        verify_url = reverse("admin:referrals_ledgercheckpoint_verify", current_app=self.admin_site.name)
        extra_context = {**(extra_context or {}), "verify_url": verify_url if self.may_verify(request) else ""}
        return super().changelist_view(request, extra_context)

    def verify_view(self, request):
        """GET: what the verification checks; POST: start it and follow it on its job page."""
        if not self.may_verify(request):
            raise PermissionDenied
        if request.method == "POST":
            job = ledger_verify_start(actor=request.user)
            self.message_user(
                request, _("The ledger verification has started; this page follows it."), messages.SUCCESS
            )
            return HttpResponseRedirect(job_url(job, current_app=self.admin_site.name))
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": _("Verify the consent ledger"),
            "opts": self.opts,
            "changelist_url": reverse("admin:referrals_ledgercheckpoint_changelist", current_app=self.admin_site.name),
        }
        return TemplateResponse(request, self.verify_template, context)
