"""The back office for applicants: found by phone, ID number or external id (through the blind
indexes), shown masked; revealing personal data and exporting evidence are separate, permissioned
actions that the services record in the consent ledger. Evidence is exported by a background job
(one applicant from their page, several from the list), whose page offers the file to its
requester."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from config.admin_tools import EMPTY, LargeTableAdminMixin, error_text
from referrals import selectors
from referrals.admin.display import SEARCH_HINT, region_display, shanghai_time
from referrals.admin.jobs import job_url
from referrals.models import Applicant, Consent
from referrals.services import consents as consent_services
from referrals.services.jobs import EXPORT_LIMIT, evidence_export_start

REVEAL_CHOICES = [
    ("name", _("name")),
    ("national_id", _("national ID number")),
    ("phone", _("phone")),
]


class RevealForm(forms.Form):
    show = forms.MultipleChoiceField(
        label=_("Show in clear"),
        choices=REVEAL_CHOICES,
        widget=forms.CheckboxSelectMultiple,
    )
    reason = forms.CharField(
        label=_("Reason"),
        help_text=_("Why you need to see this (a complaint number, a regulator's request…). It is kept in the ledger."),
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        max_length=2000,
    )


def _no_store(response: HttpResponse) -> HttpResponse:
    """Personal data in clear and evidence bundles must not stay in any cache."""
    add_never_cache_headers(response)
    patch_cache_control(response, private=True)
    return response


def latest_consent(applicant: Applicant) -> Consent | None:
    """From ``selectors.applicant_list``'s prefetch (newest first): no query per row."""
    consents = list(applicant.consents.all())
    return consents[0] if consents else None


@admin.register(Applicant)
class ApplicantAdmin(LargeTableAdminMixin, admin.ModelAdmin):
    change_form_template = "admin/referrals/change_form.html"
    reveal_template = "admin/referrals/applicant/reveal.html"
    export_template = "admin/referrals/applicant/export.html"
    list_display = (
        "external_id",
        "name_display",
        "phone_display",
        "national_id_display",
        "province_display",
        "requested_amount",
        "consent_status",
        "created_at",
    )
    list_display_links = ("external_id",)
    ordering = ("-created_at",)
    list_per_page = 50
    # The box searches exactly, through the blind indexes (get_search_results); nothing here is
    # ever an icontains on an encrypted column.
    search_fields = ("=external_id",)
    search_help_text = SEARCH_HINT
    actions = ("export_selected",)
    fieldsets = (
        (None, {"fields": ("external_id", "name_display", "national_id_display", "phone_display", "age")}),
        (
            _("Request"),
            {
                "fields": (
                    "province_display",
                    "city_display",
                    "requested_amount",
                    "requested_term_months",
                    "expected_apr",
                    "monthly_income",
                    "credit_grade",
                    "decline_reasons",
                    "declined_at",
                )
            },
        ),
        (_("Consents"), {"fields": ("consents_table",)}),
        (_("Record"), {"fields": ("created_by", "created_at", "request_sha256")}),
    )
    readonly_fields = (
        "external_id",
        "name_display",
        "national_id_display",
        "phone_display",
        "age",
        "province_display",
        "city_display",
        "requested_amount",
        "requested_term_months",
        "expected_apr",
        "monthly_income",
        "credit_grade",
        "decline_reasons",
        "declined_at",
        "consents_table",
        "created_by",
        "created_at",
        "request_sha256",
    )

    def get_queryset(self, request):
        return selectors.applicant_list().select_related("created_by")

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        q = selectors.applicant_search_q(search_term)
        return (queryset.filter(q) if q is not None else queryset.none()), False

    # Intake is the API's job; the admin only reads (and reveals / exports, recorded).
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    # --- columns and fields, always masked --------------------------------------------------------
    @admin.display(description=_("name"))
    def name_display(self, applicant: Applicant) -> str:
        return applicant.name_masked

    @admin.display(description=_("phone"))
    def phone_display(self, applicant: Applicant) -> str:
        return applicant.phone_masked

    @admin.display(description=_("national ID number"))
    def national_id_display(self, applicant: Applicant) -> str:
        return applicant.national_id_masked

    @admin.display(description=_("age"))
    def age(self, applicant: Applicant) -> int:
        # The birth date is part of the (masked) ID number: show the age only.
        return applicant.age_on(timezone.localdate())

    @admin.display(description=_("province"), ordering="province")
    def province_display(self, applicant: Applicant) -> str:
        return region_display(applicant.province)

    @admin.display(description=_("city"))
    def city_display(self, applicant: Applicant) -> str:
        return region_display(applicant.city)

    @admin.display(description=_("consent"))
    def consent_status(self, applicant: Applicant) -> str:
        consent = latest_consent(applicant)
        return consent.get_status_display() if consent else EMPTY

    @admin.display(description=_("consents"))
    def consents_table(self, applicant: Applicant) -> SafeString:
        consents = list(applicant.consents.all())
        if not consents:
            return format_html("{}", _("No consent on record."))
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    consent.text.code,
                    consent.get_status_display(),
                    consent.get_channel_display(),
                    shanghai_time(consent.granted_at),
                    shanghai_time(consent.expires_at),
                    ", ".join(r.partner.code for r in consent.recipients.all()),
                    format_html(
                        '<a class="consent-link" href="{}">{}</a>',
                        reverse("admin:referrals_consent_change", args=[consent.pk]),
                        _("consent and timeline"),
                    ),
                )
                for consent in consents
            ),
        )
        return format_html(
            '<table class="spillway-consents"><thead><tr>'
            "<th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th>"
            "</tr></thead><tbody>{}</tbody></table>",
            _("consent text"),
            _("status"),
            _("channel"),
            _("granted at"),
            _("expires at"),
            _("named partners"),
            rows,
        )

    # --- reveal and export ---------------------------------------------------------------------
    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/reveal/",
                self.admin_site.admin_view(self.reveal_view),
                name="{}_{}_reveal".format(*info),
            ),
            path(
                "<path:object_id>/export-evidence/",
                self.admin_site.admin_view(self.export_view),
                name="{}_{}_export".format(*info),
            ),
            *super().get_urls(),
        ]

    def _url(self, name: str, applicant: Applicant) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=[applicant.pk],
            current_app=self.admin_site.name,
        )

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            buttons = []
            if request.user.has_perm("referrals.reveal_pii"):
                buttons.append({"name": "reveal", "label": _("Reveal personal data"), "url": self._url("reveal", obj)})
            if request.user.has_perm("referrals.export_evidence"):
                buttons.append({"name": "export", "label": _("Export evidence"), "url": self._url("export", obj)})
            context["action_buttons"] = buttons
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _applicant_for(self, request, object_id: str, permission: str) -> Applicant:
        applicant = self.get_object(request, unquote(object_id))
        if applicant is None:
            raise Http404
        if not (self.has_view_permission(request, applicant) and request.user.has_perm(permission)):
            raise PermissionDenied
        return applicant

    def _context(self, request, applicant: Applicant, title) -> dict:
        request.current_app = self.admin_site.name
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "original": applicant,
            "change_url": self._url("change", applicant),
        }

    def reveal_view(self, request, object_id):
        """Ask for the fields and a reason; on POST the service records ``pii_revealed`` and this
        page shows the clear values once (never in a message, a log line or a URL)."""
        applicant = self._applicant_for(request, object_id, "referrals.reveal_pii")
        form = RevealForm(request.POST if request.method == "POST" else None)
        revealed = None
        if request.method == "POST" and form.is_valid():
            try:
                values = consent_services.applicant_reveal(
                    actor=request.user,
                    applicant=applicant,
                    fields=form.cleaned_data["show"],
                    reason=form.cleaned_data["reason"],
                )
            except ValidationError as exc:
                field_map = {"fields": "show", "reason": "reason"}
                if hasattr(exc, "error_dict"):
                    for field, errors in exc.error_dict.items():
                        form.add_error(field_map.get(field), errors)
                else:
                    form.add_error(None, exc)
            except PermissionDenied as exc:
                form.add_error(None, error_text(exc))
            else:
                labels = dict(REVEAL_CHOICES)
                revealed = [(labels[name], value) for name, value in values.items()]
        context = {
            **self._context(request, applicant, _("Reveal personal data")),
            "form": form,
            "revealed": revealed,
        }
        return _no_store(TemplateResponse(request, self.reveal_template, context))

    def export_view(self, request, object_id):
        """GET: what the bundle holds; POST: start the export job and follow it on its page (the
        job records ``evidence_exported`` and keeps the file for this user to download)."""
        applicant = self._applicant_for(request, object_id, "referrals.export_evidence")
        error = None
        if request.method == "POST":
            try:
                job = evidence_export_start(actor=request.user, applicants=[applicant])
            except (ValidationError, PermissionDenied) as exc:
                error = error_text(exc)
            else:
                self.message_user(
                    request, _("The evidence export has started; this page follows it."), messages.SUCCESS
                )
                return HttpResponseRedirect(job_url(job, current_app=self.admin_site.name))
        context = {**self._context(request, applicant, _("Export evidence")), "error": error}
        return _no_store(TemplateResponse(request, self.export_template, context))

    # --- several at once -----------------------------------------------------------------------
    def has_export_permission(self, request) -> bool:
        return request.user.has_perm("referrals.export_evidence")

    @admin.action(description=_("Export the evidence of the selected applicants"), permissions=["export"])
    def export_selected(self, request, queryset):
        """One background job for the selection: a ZIP of their bundles, each export recorded."""
        chosen = list(
            queryset.select_related(None).prefetch_related(None).only("pk").order_by("created_at")[: EXPORT_LIMIT + 1]
        )
        try:
            job = evidence_export_start(actor=request.user, applicants=chosen)
        except (ValidationError, PermissionDenied) as exc:
            self.message_user(request, error_text(exc), messages.ERROR)
            return None
        self.message_user(request, _("The evidence export has started; this page follows it."), messages.SUCCESS)
        return HttpResponseRedirect(job_url(job, current_app=self.admin_site.name))
