"""The back office for consents and consent texts: what the person was shown, whom they named,
and the consent's ledger timeline with its hashes and whether the chain verifies."""

from __future__ import annotations

import hashlib

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Prefetch
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from config.admin_tools import EMPTY, LargeTableAdminMixin, ServiceAdminMixin, ServiceModelForm, error_text
from referrals import selectors
from referrals.admin.display import (
    DATA_CATEGORY_LABELS,
    PURPOSE_LABELS,
    SEARCH_HINT,
    hash_code,
    labelled,
    payload_json,
    payload_summary,
    shanghai_time,
)
from referrals.models import Applicant, Consent, ConsentEvent, ConsentRecipient, ConsentText
from referrals.models.consent import TEXT_CODE_VALIDATOR
from referrals.services import consents as consent_services
from referrals.services.ledger import ledger_verify

TEXT_CODE = TEXT_CODE_VALIDATOR


def _text_body(text: ConsentText) -> SafeString:
    # Exactly as shown to the person: line breaks and spacing kept, nothing reformatted.
    return format_html('<div class="consent-text-body">{}</div>', text.body)


# --- consents -------------------------------------------------------------------------------------
class WithdrawForm(forms.Form):
    channel = forms.ChoiceField(
        label=_("How the applicant asked"),
        choices=Consent.Channel.choices,
        initial=Consent.Channel.CALL_CENTER,
    )
    reason = forms.CharField(
        label=_("Reason"),
        help_text=_("E.g. the call or complaint reference. It is kept in the ledger."),
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        max_length=2000,
    )


@admin.register(Consent)
class ConsentAdmin(LargeTableAdminMixin, admin.ModelAdmin):
    change_form_template = "admin/referrals/consent/change_form.html"
    withdraw_template = "admin/referrals/consent/withdraw.html"
    list_display = (
        "applicant_display",
        "text_code",
        "status",
        "channel",
        "partners_display",
        "granted_at",
        "expires_at",
    )
    list_filter = ("status", "channel", "text")
    ordering = ("-created_at",)
    search_fields = ("=applicant__external_id",)  # see get_search_results: exact, by blind index
    search_help_text = SEARCH_HINT
    actions = ()
    fieldsets = (
        (None, {"fields": ("applicant_link", "status", "channel", "granted_at", "expires_at")}),
        (
            _("Consent text as shown"),
            {"fields": ("text_link", "text_body", "text_sha256_display")},
        ),
        (_("Named partners"), {"fields": ("recipients_table",)}),
        (_("Scope"), {"fields": ("categories_display", "purposes_display")}),
        (_("Evidence of the grant"), {"fields": ("ip", "device_id", "evidence_sha256")}),
        (
            _("Withdrawal and expiry"),
            {"fields": ("withdrawn_at", "withdrawal_channel", "withdrawal_reason", "expired_at")},
        ),
    )
    readonly_fields = (
        "applicant_link",
        "status",
        "channel",
        "granted_at",
        "expires_at",
        "text_link",
        "text_body",
        "text_sha256_display",
        "recipients_table",
        "categories_display",
        "purposes_display",
        "ip",
        "device_id",
        "evidence_sha256",
        "withdrawn_at",
        "withdrawal_channel",
        "withdrawal_reason",
        "expired_at",
    )

    def get_queryset(self, request):
        recipients = ConsentRecipient.objects.select_related("partner").order_by("partner__code")
        return (
            super()
            .get_queryset(request)
            .select_related("applicant", "text")
            .prefetch_related(Prefetch("recipients", queryset=recipients))
        )

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        q = selectors.applicant_search_q(search_term)
        if q is None:
            return queryset.none(), False
        return queryset.filter(applicant__in=Applicant.objects.filter(q).values("pk")), False

    # A consent is what the applicant agreed to: it changes only by withdrawal or expiry.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    # --- columns and fields ----------------------------------------------------------------------
    @admin.display(description=_("applicant"), ordering="applicant__external_id")
    def applicant_display(self, consent: Consent) -> str:
        return str(consent.applicant)  # external id and masked name

    @admin.display(description=_("applicant"))
    def applicant_link(self, consent: Consent) -> SafeString:
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:referrals_applicant_change", args=[consent.applicant_id]),
            str(consent.applicant),
        )

    @admin.display(description=_("consent text"), ordering="text__code")
    def text_code(self, consent: Consent) -> str:
        return consent.text.code

    @admin.display(description=_("named partners"))
    def partners_display(self, consent: Consent) -> str:
        return ", ".join(r.partner.code for r in consent.recipients.all()) or EMPTY

    @admin.display(description=_("consent text"))
    def text_link(self, consent: Consent) -> SafeString:
        text = consent.text
        return format_html(
            '<a href="{}">{}</a> ({}, {})',
            reverse("admin:referrals_consenttext_change", args=[text.pk]),
            text.code,
            text.language,
            shanghai_time(text.created_at),
        )

    @admin.display(description=_("text"))
    def text_body(self, consent: Consent) -> SafeString:
        return _text_body(consent.text)

    @admin.display(description=_("SHA-256"))
    def text_sha256_display(self, consent: Consent) -> SafeString:
        actual = hashlib.sha256(consent.text.body.encode("utf-8")).hexdigest()
        ok = actual == consent.text_sha256 == consent.text.sha256
        return format_html(
            '<code class="ledger-hash-full">{}</code> <span class="text-hash-{}">{}</span>',
            consent.text_sha256,
            "ok" if ok else "mismatch",
            _("✔ matches the text above") if ok else _("✘ does not match the text above"),
        )

    @admin.display(description=_("named partners"))
    def recipients_table(self, consent: Consent) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (r.partner.code, r.disclosed_name, r.disclosed_contact_email, r.disclosed_contact_phone)
                for r in consent.recipients.all()
            ),
        )
        return format_html(
            '<table class="spillway-recipients"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>'
            "</thead><tbody>{}</tbody></table>",
            _("partner"),
            _("name disclosed"),
            _("contact email disclosed"),
            _("contact phone disclosed"),
            rows,
        )

    @admin.display(description=_("data categories"))
    def categories_display(self, consent: Consent) -> str:
        return labelled(consent.data_categories, DATA_CATEGORY_LABELS)

    @admin.display(description=_("purposes"))
    def purposes_display(self, consent: Consent) -> str:
        return labelled(consent.purposes, PURPOSE_LABELS)

    # --- the timeline and the withdraw button ----------------------------------------------------
    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["can_see_ledger"] = request.user.has_perm("referrals.view_consentevent")
            if context["can_see_ledger"]:
                context["timeline"] = [self._timeline_row(event) for event in selectors.consent_events(obj)]
                context["ledger_report"] = ledger_verify(consent_id=obj.pk)
            context["action_buttons"] = []
            if request.user.has_perm("referrals.withdraw_consent") and obj.status != Consent.Status.WITHDRAWN:
                context["action_buttons"].append(
                    {"name": "withdraw", "label": _("Withdraw on the applicant's behalf"), "url": self._url(obj)}
                )
        return super().render_change_form(request, context, add, change, form_url, obj)

    @staticmethod
    def _timeline_row(event: ConsentEvent) -> dict:
        summary, more = payload_summary(event.payload)
        return {
            "event": event,
            "type": event.get_type_display(),
            "occurred_at": shanghai_time(event.occurred_at),
            "occurred_at_utc": event.occurred_at.isoformat(),
            "summary": summary,
            "more": more,
            "payload_json": payload_json(event.payload),
            "prev_hash": hash_code(event.prev_hash),
            "hash": hash_code(event.hash),
        }

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/withdraw/",
                self.admin_site.admin_view(self.withdraw_view),
                name="{}_{}_withdraw".format(*info),
            ),
            *super().get_urls(),
        ]

    def _url(self, consent: Consent, name: str = "withdraw") -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=[consent.pk],
            current_app=self.admin_site.name,
        )

    def withdraw_view(self, request, object_id):
        """A compliance officer records a withdrawal the applicant asked for (a call, a complaint)."""
        consent = self.get_object(request, unquote(object_id))
        if consent is None:
            raise Http404
        if not (self.has_view_permission(request, consent) and request.user.has_perm("referrals.withdraw_consent")):
            raise PermissionDenied
        change_url = self._url(consent, "change")
        form = WithdrawForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                result = consent_services.consent_withdraw(
                    actor=request.user,
                    consent=consent,
                    channel=form.cleaned_data["channel"],
                    reason=form.cleaned_data["reason"],
                )
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, error_text(exc), messages.ERROR)
            else:
                self.message_user(
                    request,
                    _("The consent is withdrawn; %(count)d queued referral(s) cancelled.")
                    % {"count": len(result.cancelled_referrals)},
                    messages.SUCCESS,
                )
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Withdraw on the applicant's behalf"),
            "opts": self.opts,
            "original": consent,
            "form": form,
            "change_url": change_url,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.withdraw_template, context)


# --- consent texts ----------------------------------------------------------------------------------
class ConsentTextAdminForm(ServiceModelForm):
    code = forms.CharField(label=_("code"), max_length=64, validators=[TEXT_CODE])
    language = forms.ChoiceField(label=_("language"), choices=settings.LANGUAGES, initial="zh-hans")
    validity_days = forms.IntegerField(label=_("validity (days)"), min_value=1, max_value=3650, initial=90)

    class Meta:
        model = ConsentText
        fields = ("code", "language", "body", "validity_days")
        widgets = {"body": forms.Textarea(attrs={"rows": 16, "cols": 100})}
        help_texts = {
            "body": _("Exactly as the applicant will see it. Texts are never edited: a new wording is a new code.")
        }

    def save_through_service(self, *, actor, data):
        return consent_services.consent_text_create(actor=actor, **data)


@admin.register(ConsentText)
class ConsentTextAdmin(LargeTableAdminMixin, ServiceAdminMixin, admin.ModelAdmin):
    form = ConsentTextAdminForm
    change_form_template = "admin/referrals/change_form.html"
    list_display = ("code", "language", "sha256_display", "validity_days", "consents_count", "created_by", "created_at")
    list_filter = ("language",)
    list_select_related = ("created_by",)
    search_fields = ("code",)
    ordering = ("-created_at",)
    actions = ()

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(consent_count=Count("consents"))

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return ((None, {"fields": ("code", "language", "validity_days", "body")}),)
        return (
            (None, {"fields": ("code", "language", "validity_days", "sha256_display")}),
            (_("Text"), {"fields": ("body_display",)}),
            (_("Use"), {"fields": ("consents_link",)}),
            (_("Record"), {"fields": ("created_by", "created_at")}),
        )

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return (
            "code",
            "language",
            "validity_days",
            "sha256_display",
            "body_display",
            "consents_link",
            "created_by",
            "created_at",
        )

    # Immutable once created: a new wording is a new code.
    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description=_("SHA-256"))
    def sha256_display(self, text: ConsentText) -> SafeString:
        return hash_code(text.sha256)

    @admin.display(description=_("text"))
    def body_display(self, text: ConsentText) -> SafeString:
        return _text_body(text)

    @admin.display(description=_("consents"), ordering="consent_count")
    def consents_count(self, text: ConsentText) -> int:
        return text.consent_count

    @admin.display(description=_("consents given with this text"))
    def consents_link(self, text: ConsentText) -> SafeString:
        count = getattr(text, "consent_count", None)
        if count is None:
            count = text.consents.count()
        url = reverse("admin:referrals_consent_changelist") + "?" + urlencode({"text__id__exact": text.pk})
        return format_html('{} — <a class="consents-link" href="{}">{}</a>', count, url, _("show them"))
