"""Statements: the list (with totals for the current filter), each statement's page (lines by type
with subtotals, its history, the lifecycle buttons, exports and reconciliation) and the revenue chart.

Nothing is edited here: every button posts to a view that calls a service from
``settlements.services`` (four-eyes and the state machine live there) and redirects back with a
message. The pages stay bounded on big statements: the first ``LINES_SHOWN`` lines of each type are
listed, every line is counted and added up."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from config.admin_tools import EMPTY, ReadOnlyAdmin, error_text
from referrals.admin.display import shanghai_time
from settlements import exports, periods, selectors
from settlements.admin.display import statement_status
from settlements.admin.runs import add_service_errors
from settlements.models import Statement, StatementLine
from settlements.services import statements as svc
from settlements.services.reconcile import MAX_BYTES, statement_reconcile

LINES_SHOWN = 200  # per line type, on a statement's page
DIFFERENCES_SHOWN = 200  # per list, in the latest reconciliation
REVENUE_MONTHS = 12
Status = Statement.Status


# --- lifecycle buttons ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StatementAction:
    """One lifecycle button: the statuses it applies to, who may press it, the service it calls and
    the text it asks for (``note`` or ``reason``, passed to the service under that name)."""

    name: str
    label: Any
    permission: str
    sources: tuple[str, ...]
    run: Callable[..., Statement]  # run(statement=, user=, **{field: text})
    field: str | None = None
    field_label: Any = ""
    required: bool = False
    danger: bool = False

    def applies(self, statement: Statement) -> bool:
        return statement.status in self.sources


ACTIONS = {
    action.name: action
    for action in (
        StatementAction(
            "submit", _("Submit for review"), "settlements.submit_statement", (Status.DRAFT,), svc.statement_submit
        ),
        StatementAction(
            "approve",
            _("Approve"),
            "settlements.approve_statement",
            (Status.UNDER_REVIEW,),
            svc.statement_approve,
            field="note",
            field_label=_("Approval note"),
        ),
        StatementAction(
            "send-back",
            _("Send back"),
            "settlements.approve_statement",
            (Status.UNDER_REVIEW,),
            svc.statement_send_back,
            field="reason",
            field_label=_("What must be corrected"),
            required=True,
            danger=True,
        ),
        StatementAction("issue", _("Issue"), "settlements.issue_statement", (Status.APPROVED,), svc.statement_issue),
        StatementAction(
            "pay",
            _("Mark as paid"),
            "settlements.issue_statement",
            (Status.ISSUED,),
            svc.statement_mark_paid,
            field="note",
            field_label=_("Payment note"),
        ),
        StatementAction(
            "dispute",
            _("Dispute"),
            "settlements.issue_statement",
            (Status.UNDER_REVIEW, Status.APPROVED, Status.ISSUED),
            svc.statement_dispute,
            field="reason",
            field_label=_("What the partner disputes"),
            required=True,
            danger=True,
        ),
        StatementAction(
            "resolve",
            _("Resolve dispute"),
            "settlements.issue_statement",
            (Status.DISPUTED,),
            svc.statement_resolve,
            field="note",
            field_label=_("How the dispute was settled"),
            required=True,
        ),
    )
}


class ActionForm(forms.Form):
    """The text an action asks for (if any); prefixed with the action's name, as several are on one page."""

    def __init__(self, *args, action: StatementAction, **kwargs):
        super().__init__(*args, prefix=action.name, **kwargs)
        if action.field:
            self.fields[action.field] = forms.CharField(
                label=action.field_label,
                required=action.required,
                max_length=2000,
                widget=forms.Textarea(attrs={"rows": 3, "cols": 60, "data-testid": f"{action.name}-{action.field}"}),
            )


class ReconcileForm(forms.Form):
    file = forms.FileField(
        label=_("Partner's figures (CSV)"),
        help_text=_("UTF-8 CSV with the header referral_id,line_type,amount; at most 20 MB."),
        widget=forms.FileInput(attrs={"accept": ".csv,text/csv", "data-testid": "reconcile-file"}),
    )


# --- display helpers ------------------------------------------------------------------------------
def short_id(value) -> str:
    return str(value)[:8]


def percent_text(rate: Decimal | None) -> str:
    if rate is None:
        return EMPTY
    return f"{format((rate * 100).normalize(), 'f')}%"


class UrlPattern:
    """``reverse`` once, then fill in ids: a statement page links hundreds of referrals and loans."""

    PLACEHOLDER = "__id__"

    def __init__(self, name: str, *, allowed: bool, current_app: str):
        self.pattern = reverse(name, args=[self.PLACEHOLDER], current_app=current_app) if allowed else ""

    def __call__(self, object_id) -> str:
        return self.pattern.replace(self.PLACEHOLDER, str(object_id)) if self.pattern and object_id else ""


# --- the statements -------------------------------------------------------------------------------
@admin.register(Statement)
class StatementAdmin(ReadOnlyAdmin):
    change_list_template = "admin/settlements/statement/change_list.html"
    statement_template = "admin/settlements/statement/statement.html"
    revenue_template = "admin/settlements/statement/revenue.html"
    list_display = ("__str__", "partner_code", "period", "status_display", "net", "vat", "gross", "line_count")
    list_display_links = ("__str__",)
    list_filter = ("period", "status", "partner")
    list_select_related = ("partner",)
    ordering = ("-period", "partner__code")
    search_fields = ("partner__code",)
    search_help_text = _("Partner code (or part of it).")

    # --- columns -------------------------------------------------------------------------------
    @admin.display(description=_("partner"), ordering="partner__code")
    def partner_code(self, statement: Statement) -> str:
        return statement.partner.code

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, statement: Statement) -> str:
        return statement_status(statement.status)

    def changelist_view(self, request, extra_context=None):
        """Above the list: Σ net, VAT and gross of every statement the filters select (one query)."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            response.context_data["totals"] = selectors.statement_totals(changelist.queryset)
            response.context_data["revenue_url"] = self._url("revenue")
        return response

    # --- urls ----------------------------------------------------------------------------------
    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("revenue/", wrap(self.revenue_view), name="{}_{}_revenue".format(*info)),
            path("<path:object_id>/act/<slug:name>/", wrap(self.action_view), name="{}_{}_act".format(*info)),
            path("<path:object_id>/reconcile/", wrap(self.reconcile_view), name="{}_{}_reconcile".format(*info)),
            *super().get_urls(),
        ]

    def _url(self, name: str, *args) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=args, current_app=self.admin_site.name
        )

    def _statement(self, request, object_id) -> Statement:
        """The statement with the people named on it (one query), or 404; 403 without view permission."""
        try:
            pk = uuid.UUID(str(unquote(object_id)))
        except ValueError:
            raise Http404 from None
        statement = (
            self.get_queryset(request)
            .select_related("partner", "computed_by", "submitted_by", "approved_by")
            .filter(pk=pk)
            .first()
        )
        if statement is None:
            raise Http404
        if not self.has_view_permission(request, statement):
            raise PermissionDenied
        return statement

    # --- a statement's page --------------------------------------------------------------------
    def change_view(self, request, object_id, form_url="", extra_context=None):
        return self.statement_page(request, self._statement(request, object_id), extra_context=extra_context)

    def statement_page(
        self,
        request,
        statement: Statement,
        *,
        bound: ActionForm | None = None,
        reconcile_form: ReconcileForm | None = None,
        reconcile_errors: list[str] | None = None,
        extra_context=None,
    ) -> TemplateResponse:
        user = request.user
        actions = []
        for action in self.allowed_actions(request, statement):
            form = bound if bound is not None and bound.prefix == action.name else ActionForm(action=action)
            actions.append({"action": action, "form": form, "url": self._url("act", statement.pk, action.name)})
        approving = any(item["action"].name == "approve" for item in actions)
        unresolved = svc.unresolved_differences(statement) if approving else ""
        if unresolved:
            for item in actions:
                if item["action"].name == "approve":
                    item["form"].fields["note"].widget.attrs["required"] = True
        may_reconcile = user.has_perm("settlements.reconcile_statement")
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "status_label": statement_status(statement.status),
            "title": _("Statement %(partner)s %(period)s")
            % {"partner": statement.partner.code, "period": statement.period},
            "opts": self.opts,
            "original": statement,
            "statement": statement,
            "facts": self.facts(statement),
            "groups": self.line_groups(request, statement),
            "lines_shown": LINES_SHOWN,
            "transitions": [
                {
                    "at": shanghai_time(t.at),
                    "by": t.by.get_username(),
                    "source": statement_status(t.source),
                    "target": statement_status(t.target),
                    "note": t.note,
                }
                for t in selectors.statement_transitions(statement)
            ],
            "actions": actions,
            "unresolved": unresolved,
            "four_eyes": approving and user.pk in (statement.computed_by_id, statement.submitted_by_id),
            "exports": self.export_links(request, statement),
            "reconciliation": self.reconciliation(request, statement),
            "reconcile_url": self._url("reconcile", statement.pk) if may_reconcile else "",
            "reconcile_form": reconcile_form or (ReconcileForm() if may_reconcile else None),
            "reconcile_errors": reconcile_errors or [],
            "changelist_url": self._url("changelist"),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.statement_template, context)

    def allowed_actions(self, request, statement: Statement) -> list[StatementAction]:
        return [a for a in ACTIONS.values() if a.applies(statement) and request.user.has_perm(a.permission)]

    def facts(self, statement: Statement) -> list[tuple[Any, str]]:
        def who(user) -> str:
            return user.get_username() if user is not None else EMPTY

        facts = [
            (_("partner"), f"{statement.partner.code} {statement.partner.name}"),
            (_("period"), statement.period),
            (_("computed by"), f"{who(statement.computed_by)} · {shanghai_time(statement.computed_at)}"),
        ]
        if statement.submitted_at:
            facts.append(
                (_("submitted by"), f"{who(statement.submitted_by)} · {shanghai_time(statement.submitted_at)}")
            )
        if statement.approved_at:
            facts.append((_("approved by"), f"{who(statement.approved_by)} · {shanghai_time(statement.approved_at)}"))
            if statement.approval_note:
                facts.append((_("approval note"), statement.approval_note))
        if statement.issued_at:
            facts.append((_("issued at"), shanghai_time(statement.issued_at)))
        if statement.paid_at:
            facts.append((_("paid at"), shanghai_time(statement.paid_at)))
        return facts

    def line_groups(self, request, statement: Statement) -> list[dict]:
        user, app = request.user, self.admin_site.name
        referral_url = UrlPattern(
            "admin:referrals_referral_change", allowed=user.has_perm("referrals.view_referral"), current_app=app
        )
        loan_url = UrlPattern(
            "admin:referrals_loan_change", allowed=user.has_perm("referrals.view_loan"), current_app=app
        )
        event_url = UrlPattern(
            "admin:referrals_callbackevent_change",
            allowed=user.has_perm("referrals.view_callbackevent"),
            current_app=app,
        )
        groups = []
        for group in selectors.statement_line_groups(statement, per_type=LINES_SHOWN):
            groups.append(
                {
                    "line_type": group.line_type,
                    "label": group.label,
                    "count": group.count,
                    "subtotal": group.subtotal,
                    "more": group.more,
                    "lines": [self.line_row(line, referral_url, loan_url, event_url) for line in group.lines],
                }
            )
        return groups

    @staticmethod
    def line_row(line: StatementLine, referral_url, loan_url, event_url) -> dict:
        loan, event = line.loan, line.event
        return {
            "id": line.pk,
            "occurred_at": shanghai_time(line.occurred_at),
            "amount": line.amount,
            "vat_rate": percent_text(line.vat_rate),
            "referral": short_id(line.referral_id),
            "referral_url": referral_url(line.referral_id),
            "loan": loan.loan_id if loan is not None else "",
            "loan_url": loan_url(line.loan_id),
            "event": f"{event.type} · {event.event_id}" if event is not None else "",
            "event_url": event_url(line.event_id),
            "late": line.late,
            "original_period": periods.of(line.occurred_at) if line.late else "",
            "original_date": shanghai_time(line.occurred_at)[:10] if line.late else "",
            "basis": line.basis,
        }

    def export_links(self, request, statement: Statement) -> list[dict]:
        if not request.user.has_perm("settlements.export_statement"):
            return []
        base = reverse("statement-export", args=[statement.pk])
        return [{"format": fmt, "label": fmt.upper(), "url": f"{base}?format={fmt}"} for fmt in exports.FORMATS]

    def reconciliation(self, request, statement: Statement):
        if not request.user.has_perm("settlements.view_reconciliation"):
            return None
        view = selectors.latest_reconciliation(statement, per_kind=DIFFERENCES_SHOWN)
        if view is None:
            return None
        referral_url = UrlPattern(
            "admin:referrals_referral_change",
            allowed=request.user.has_perm("referrals.view_referral"),
            current_app=self.admin_site.name,
        )
        line_types = dict(StatementLine._meta.get_field("line_type").choices)
        reconciliation = view.reconciliation
        return {
            "object": reconciliation,
            "uploaded_at": shanghai_time(reconciliation.uploaded_at),
            "uploaded_by": reconciliation.uploaded_by.get_username(),
            "stale": view.stale,
            "lists": [
                {
                    "kind": item_list.kind,
                    "testid": item_list.kind.replace("_", "-"),
                    "label": item_list.label,
                    "count": item_list.count,
                    "more": item_list.more,
                    "items": [
                        {
                            "referral": short_id(item.referral_id),
                            "referral_url": referral_url(item.referral_id),
                            "line_type": str(line_types.get(item.line_type, item.line_type)),
                            "ours": item.ours,
                            "theirs": item.theirs,
                            "difference": item.difference,
                        }
                        for item in item_list.items
                    ],
                }
                for item_list in view.lists
            ],
        }

    # --- lifecycle -----------------------------------------------------------------------------
    def action_view(self, request, object_id, name):
        """POST only: run one lifecycle step through its service, then back to the statement with a
        message. A missing note or reason shows next to its field instead."""
        action = ACTIONS.get(name)
        if action is None:
            raise Http404
        statement = self._statement(request, object_id)
        if not request.user.has_perm(action.permission):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        change_url = self._url("change", statement.pk)
        label = str(statement)
        if not action.applies(statement):
            self.message_user(
                request,
                _("%(statement)s is %(status)s: “%(action)s” does not apply.")
                % {"statement": label, "status": statement_status(statement.status), "action": action.label},
                messages.ERROR,
            )
            return HttpResponseRedirect(change_url)
        form = ActionForm(request.POST, action=action)
        if not form.is_valid():
            return self.statement_page(request, statement, bound=form)
        text = {action.field: form.cleaned_data.get(action.field, "")} if action.field else {}
        try:
            done = action.run(statement=statement, user=request.user, **text)
        except ValidationError as exc:
            if action.field and hasattr(exc, "error_dict") and action.field in exc.error_dict:
                add_service_errors(form, exc)
                return self.statement_page(request, statement, bound=form)
            self.message_user(request, f"{label}: {error_text(exc)}", messages.ERROR)
        except PermissionDenied as exc:
            self.message_user(request, f"{label}: {error_text(exc)}", messages.ERROR)
        else:
            self.message_user(
                request,
                _("%(statement)s is now %(status)s.") % {"statement": label, "status": statement_status(done.status)},
                messages.SUCCESS,
            )
        return HttpResponseRedirect(change_url)

    # --- reconciliation ------------------------------------------------------------------------
    def reconcile_view(self, request, object_id):
        """POST only: compare the partner's CSV with the statement. A file with bad rows is refused
        whole (nothing stored) and each row's message is shown under the upload field."""
        statement = self._statement(request, object_id)
        if not request.user.has_perm("settlements.reconcile_statement"):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        form = ReconcileForm(request.POST, request.FILES)
        if not form.is_valid():
            return self.statement_page(request, statement, reconcile_form=form)
        upload = form.cleaned_data["file"]
        content = upload.read(MAX_BYTES + 1)  # one byte more than allowed is enough to refuse it
        try:
            reconciliation = statement_reconcile(
                statement=statement, user=request.user, content=content, filename=upload.name
            )
        except ValidationError as exc:
            errors = (
                [message for messages_ in exc.message_dict.values() for message in messages_]
                if hasattr(exc, "error_dict")
                else exc.messages
            )
            return self.statement_page(request, statement, reconcile_form=form, reconcile_errors=errors)
        except PermissionDenied as exc:
            self.message_user(request, f"{statement}: {error_text(exc)}", messages.ERROR)
        else:
            if reconciliation.differences:
                self.message_user(
                    request,
                    _("Reconciliation stored: %(n)d differences, total difference %(total)s.")
                    % {"n": reconciliation.differences, "total": reconciliation.total_difference},
                    messages.WARNING,
                )
            else:
                self.message_user(request, _("Reconciliation stored: the figures match."), messages.SUCCESS)
        return HttpResponseRedirect(self._url("change", statement.pk) + "#reconciliation")

    # --- revenue chart -------------------------------------------------------------------------
    def revenue_view(self, request):
        """Gross revenue per partner over the last twelve months, as a Chart.js chart and a table."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        current = periods.of(timezone.now())
        last = request.GET.get("end", "").strip() or current
        try:
            periods.parse(last)
        except ValidationError:
            last = current
        billed_only = request.GET.get("scope") == "billed"
        revenue = selectors.monthly_revenue(last=last, months=REVENUE_MONTHS, billed_only=billed_only)
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": _("Monthly gross revenue per partner"),
            "opts": self.opts,
            "revenue": revenue,
            "chart": revenue.chart_data(),
            "chart_labels": {"total": str(_("total")), "currency": "CNY"},
            "last": last,
            "earlier": periods.shift(last, -REVENUE_MONTHS),
            "later": min(periods.shift(last, REVENUE_MONTHS), current) if last < current else "",
            "billed_only": billed_only,
            "changelist_url": self._url("changelist"),
            "revenue_url": self._url("revenue"),
        }
        return TemplateResponse(request, self.revenue_template, context)
