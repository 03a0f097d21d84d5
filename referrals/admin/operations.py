"""The operations screens for referrals: the queues (with a summary per partner and status), each
referral's routing, calls and loans, and retry / cancel as buttons that call the services.

Big tables (perf-notes.md): ordered by an indexed ``created_at``, counts estimated by
``EstimatedCountPaginator``, no date hierarchy, foreign keys joined in the page query."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Prefetch
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

# What the queue summary counts: referrals still on their way, and the dead ones waiting for a person.
from config.admin_tools import EMPTY, ReadOnlyAdmin, error_text
from referrals import selectors
from referrals.admin.display import shanghai_time
from referrals.admin.jobs import job_url
from referrals.admin.queues import (
    ATTEMPTS_SHOWN,
    CALLBACKS_SHOWN,
    OPERATIONS,
    Operation,
    OperationForm,
    age_text,
    applicant_text,
    html_table,
    label,
    queue_summary,
    short_id,
    uuid_or_none,
)
from referrals.models import (
    Applicant,
    Dispatch,
    DispatchAttempt,
    Referral,
    RoutingDecision,
)
from referrals.services.jobs import RETRY_LIMIT, referrals_retry_start


# --- referrals ------------------------------------------------------------------------------------
@admin.register(Referral)
class ReferralAdmin(ReadOnlyAdmin):
    change_list_template = "admin/referrals/referral/change_list.html"
    change_form_template = "admin/referrals/referral/change_form.html"
    operation_template = "admin/referrals/operations/confirm.html"
    list_display = (
        "referral_id",
        "partner",
        "status_display",
        "applicant_display",
        "contract_version",
        "priority",
        "created_at",
        "submitted_at",
        "accepted_at",
        "age",
    )
    list_display_links = ("referral_id",)
    list_filter = ("status", "partner")
    list_select_related = ("partner", "contract", "applicant")
    ordering = ("-created_at",)
    search_fields = ("=applicant__external_id",)  # see get_search_results: exact, by blind index
    search_help_text = _(
        "Exact referral id, or the applicant's phone, ID number or external id (typed in full; partial numbers "
        "find nothing)."
    )
    actions = ("retry_selected",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "applicant_display",
                    "partner",
                    "contract_display",
                    "status",
                    "status_reason",
                    "priority",
                    "expected_fee",
                    "application_id",
                )
            },
        ),
        (
            _("Times"),
            {
                "fields": (
                    "created_at",
                    "probe_answered_at",
                    "submitted_at",
                    "accepted_at",
                    "returned_at",
                    "updated_at",
                    "age",
                )
            },
        ),
    )
    # Sections shown only to those who may read what they list.
    sections = (
        (_("Routing decisions"), "routing_table", ("referrals.view_routingdecision",)),
        (_("Calls to the partner"), "dispatches_table", ("referrals.view_dispatch", "referrals.view_dispatchattempt")),
        (_("Partner callbacks"), "callbacks_table", ("referrals.view_callbackevent",)),
        (_("Loans"), "loans_table", ("referrals.view_loan",)),
    )
    readonly_fields = (
        "id",
        "applicant_display",
        "partner",
        "contract_display",
        "status",
        "status_reason",
        "priority",
        "expected_fee",
        "application_id",
        "created_at",
        "probe_answered_at",
        "submitted_at",
        "accepted_at",
        "returned_at",
        "updated_at",
        "age",
        "routing_table",
        "dispatches_table",
        "callbacks_table",
        "loans_table",
    )

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("partner", "contract", "applicant")

    def get_fieldsets(self, request, obj=None):
        extra = tuple(
            (title, {"fields": (field,)})
            for title, field, permissions in self.sections
            if request.user.has_perms(permissions)
        )
        return (*self.fieldsets, *extra)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        referral_id = uuid_or_none(term)
        if referral_id is not None:
            return queryset.filter(pk=referral_id), False
        q = selectors.applicant_search_q(term)
        if q is None:
            return queryset.none(), False
        return queryset.filter(applicant__in=Applicant.objects.filter(q).values("pk")), False

    def changelist_view(self, request, extra_context=None):
        changelist_url = reverse("admin:referrals_referral_changelist", current_app=self.admin_site.name)
        extra_context = {**(extra_context or {}), "queue_summary": queue_summary(changelist_url)}
        return super().changelist_view(request, extra_context)

    # --- columns -------------------------------------------------------------------------------
    @admin.display(description=_("referral"), ordering="pk")
    def referral_id(self, referral: Referral) -> str:
        return short_id(referral.pk)

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, referral: Referral) -> SafeString:
        if not referral.status_reason:
            return format_html('<span class="referral-status">{}</span>', referral.get_status_display())
        return format_html(
            '<span class="referral-status">{}</span> <span class="status-reason" title="{}">({})</span>',
            referral.get_status_display(),
            referral.status_reason,
            referral.status_reason if len(referral.status_reason) <= 60 else referral.status_reason[:59] + "…",
        )

    @admin.display(description=_("applicant"), ordering="applicant__external_id")
    def applicant_display(self, referral: Referral) -> str:
        return applicant_text(referral.applicant)

    @admin.display(description=_("contract version"), ordering="contract__version")
    def contract_version(self, referral: Referral) -> str:
        return f"v{referral.contract.version}"

    @admin.display(description=_("contract version"))
    def contract_display(self, referral: Referral) -> SafeString:
        return format_html(
            '<a href="{}">{} v{}</a>',
            reverse("admin:partners_contract_change", args=[referral.contract_id]),
            referral.partner.code,
            referral.contract.version,
        )

    @admin.display(description=_("waiting for"), ordering="-created_at")
    def age(self, referral: Referral) -> str:
        return age_text(referral.created_at)

    # --- detail sections -------------------------------------------------------------------------
    @admin.display(description=_("routing decisions"))
    def routing_table(self, referral: Referral) -> SafeString:
        decisions = (
            RoutingDecision.objects.filter(applicant_id=referral.applicant_id)
            .select_related("partner", "contract")
            .order_by("partner__code")
        )
        rows = [
            (
                "this-referral" if decision.partner_id == referral.partner_id else "",
                decision.partner.code,
                f"v{decision.contract.version}" if decision.contract else EMPTY,
                decision.get_outcome_display(),
                decision.reason,
                decision.detail or EMPTY,
            )
            for decision in decisions
        ]
        if not rows:
            return format_html("{}", _("No routing decision on record."))
        return html_table(
            "spillway-routing",
            [_("partner"), _("contract version"), _("outcome"), _("reason"), _("detail")],
            rows,
            '<tr class="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
        )

    @admin.display(description=_("calls to the partner"))
    def dispatches_table(self, referral: Referral) -> SafeString:
        attempts = DispatchAttempt.objects.order_by("-started_at", "-id")[:ATTEMPTS_SHOWN]
        dispatches = referral.dispatches.order_by("created_at").prefetch_related(
            Prefetch("attempt_rows", queryset=attempts, to_attr="newest_attempts")
        )
        blocks = []
        for dispatch in dispatches:
            attempt_rows = [
                (
                    attempt.number,
                    shanghai_time(attempt.started_at),
                    attempt.duration_ms,
                    attempt.http_status or EMPTY,
                    attempt.get_outcome_display(),
                    attempt.error or EMPTY,
                )
                for attempt in dispatch.newest_attempts
            ]
            table = (
                html_table(
                    "spillway-attempts",
                    [_("attempt"), _("started at"), _("duration (ms)"), _("HTTP status"), _("outcome"), _("error")],
                    attempt_rows,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                )
                if attempt_rows
                else format_html("<p>{}</p>", _("Not tried yet."))
            )
            blocks.append(
                format_html(
                    '<div class="spillway-dispatch"><p><strong><a href="{}">{} #{}</a></strong> — {} · {}: {} · '
                    "{}: {} · {}: {}</p>{}</div>",
                    reverse("admin:referrals_dispatch_change", args=[dispatch.pk]),
                    dispatch.get_kind_display(),
                    dispatch.pk,
                    dispatch.get_status_display(),
                    _("attempts"),
                    dispatch.attempts,
                    _("next attempt at"),
                    shanghai_time(dispatch.next_attempt_at) if dispatch.status == Dispatch.Status.PENDING else EMPTY,
                    _("last error"),
                    dispatch.last_error or EMPTY,
                    table,
                )
            )
        if not blocks:
            return format_html("{}", _("No call to the partner yet."))
        return format_html_join("", "{}", ((block,) for block in blocks))

    @admin.display(description=_("partner callbacks"))
    def callbacks_table(self, referral: Referral) -> SafeString:
        events = list(referral.callbacks.order_by("-occurred_at", "-id")[:CALLBACKS_SHOWN])
        if not events:
            return format_html("{}", _("No callback from the partner."))
        return html_table(
            "spillway-callbacks",
            [_("type"), _("event id"), _("occurred at"), _("status"), _("note")],
            [
                (
                    reverse("admin:referrals_callbackevent_change", args=[event.pk]),
                    event.type,
                    event.event_id,
                    shanghai_time(event.occurred_at),
                    event.get_status_display(),
                    event.note or EMPTY,
                )
                for event in events
            ],
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
        )

    @admin.display(description=_("loans"))
    def loans_table(self, referral: Referral) -> SafeString:
        loans = list(referral.loans.order_by("created_at"))
        if not loans:
            return format_html("{}", _("No loan."))
        return html_table(
            "spillway-loans",
            [_("partner's loan id"), _("status"), _("principal"), _("APR"), _("term (months)"), _("disbursed at")],
            [
                (
                    reverse("admin:referrals_loan_change", args=[loan.pk]),
                    loan.loan_id,
                    loan.get_status_display(),
                    loan.principal if loan.principal is not None else EMPTY,
                    loan.apr if loan.apr is not None else EMPTY,
                    loan.term_months or EMPTY,
                    shanghai_time(loan.disbursed_at),
                )
                for loan in loans
            ],
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
        )

    # --- retry and cancel ----------------------------------------------------------------------
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

    def _url(self, name: str, referral: Referral, operation: str | None = None) -> str:
        args = [referral.pk] if operation is None else [referral.pk, operation]
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=args, current_app=self.admin_site.name
        )

    def allowed_operations(self, request, referral: Referral) -> list[Operation]:
        return [op for op in OPERATIONS.values() if request.user.has_perm(op.permission) and op.applies(referral)]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["operation_buttons"] = [
                {"name": op.name, "label": op.label, "url": self._url("operate", obj, op.name)}
                for op in self.allowed_operations(request, obj)
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def operation_view(self, request, object_id, name):
        """Confirm retry or cancel (cancel asks for a reason), then call the service."""
        operation = OPERATIONS.get(name)
        if operation is None:
            raise Http404
        referral = self.get_object(request, unquote(object_id))
        if referral is None:
            raise Http404
        if not (self.has_view_permission(request, referral) and request.user.has_perm(operation.permission)):
            raise PermissionDenied
        change_url = self._url("change", referral)
        if not operation.applies(referral):
            self.message_user(
                request,
                _("%(referral)s is %(status)s: %(operation)s does not apply.")
                % {"referral": label(referral), "status": referral.get_status_display(), "operation": operation.label},
                messages.ERROR,
            )
            return HttpResponseRedirect(change_url)
        form = OperationForm(request.POST if request.method == "POST" else None, needs_reason=operation.needs_reason)
        if request.method == "POST" and form.is_valid():
            try:
                done = operation.run(actor=request.user, referral=referral, reason=form.cleaned_data.get("reason", ""))
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{label(referral)}: {error_text(exc)}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    _("%(referral)s is now %(status)s.")
                    % {"referral": label(referral), "status": done.get_status_display()},
                    messages.SUCCESS,
                )
            return HttpResponseRedirect(change_url)
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": f"{operation.label}: {label(referral)}",
            "opts": self.opts,
            "original": referral,
            "operation": operation,
            "form": form,
            "change_url": change_url,
            "facts": [
                (_("partner"), str(referral.partner)),
                (_("applicant"), applicant_text(referral.applicant)),
                (_("status"), referral.get_status_display()),
                (_("status reason"), referral.status_reason or EMPTY),
                (_("created at"), shanghai_time(referral.created_at)),
            ],
        }
        return TemplateResponse(request, self.operation_template, context)

    # --- bulk retry ------------------------------------------------------------------------------
    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("referrals.retry_referral")

    @admin.action(description=_("Retry selected failed referrals"), permissions=["retry"])
    def retry_selected(self, request, queryset):
        """A background job retries each through the service, oldest first, the rules checked again
        for each when its turn comes; its page shows the progress, then what was retried and why
        the others were not."""
        chosen = list(queryset.select_related(None).only("pk").order_by("created_at")[: RETRY_LIMIT + 1])
        try:
            job = referrals_retry_start(actor=request.user, referrals=chosen)
        except (ValidationError, PermissionDenied) as exc:
            self.message_user(request, error_text(exc), messages.ERROR)
            return None
        self.message_user(request, _("The retry has started; this page follows it."), messages.SUCCESS)
        return HttpResponseRedirect(job_url(job, current_app=self.admin_site.name))
