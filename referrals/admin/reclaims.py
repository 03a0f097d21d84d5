"""Reclaims (回捞) in the back office: compliance's review queue, each case's page and the near misses.

The queue lists the cases waiting for a decision, oldest first. Approving or rejecting several at
once asks for one reason and decides each case on its own through ``reclaims_bulk``: a refusal
(four-eyes, a case blocked because a rule stopped holding, a status that moved on) is reported with
its reason and does not stop the others. A case's page shows what qualified the loan when it was
found, every rule checked again now, the timeline, the partner notice in the outbox, and the buttons
the case's status and the user's permissions allow; each posts to a view that calls the service and
comes back with a message. Nothing is edited here, and borrowers are shown masked.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from config.admin_tools import EMPTY, EstimatedCountPaginator, ReadOnlyAdmin, error_text
from referrals.admin.display import PURPOSE_LABELS, labelled, shanghai_time
from referrals.admin.queues import short_id
from referrals.models import Consent, Dispatch, Reclaim, ReclaimNearMiss
from referrals.services import reclaims as svc

Status = Reclaim.Status
STATUS_LABELS = dict(Status.choices)
RULE_LABELS = {rule.code: rule.label for rule in svc.RULES}
BULK_LIMIT = 200  # cases one bulk decision may cover (each is its own transaction)
REFUSALS_LISTED = 10  # refusals reported one by one after a bulk decision; the rest are counted


# --- display helpers ------------------------------------------------------------------------------
def status_label(code: str) -> str:
    return str(STATUS_LABELS.get(code, code)) if code else EMPTY


def case_label(reclaim: Reclaim) -> str:
    """How a case is named in messages: partner and loan, never the person."""
    return f"{reclaim.partner.code} {reclaim.loan.loan_id}"


def iso_time(value: str | None) -> str:
    """An ISO moment from the evidence, in Asia/Shanghai."""
    if not value:
        return EMPTY
    try:
        return shanghai_time(datetime.datetime.fromisoformat(value))
    except (TypeError, ValueError):
        return str(value)


def ontime_text(evidence: dict) -> str:
    ontime = evidence.get("ontime_installments")
    needed = (evidence.get("contract") or {}).get("min_ontime_installments")
    if ontime is None:
        return EMPTY
    return f"{ontime} / {needed}" if needed is not None else str(ontime)


def yes_no(value: Any) -> str:
    """Words, not ✓ / ✗: "overdue reported ✗" would read as a failed check."""
    if value is None:
        return EMPTY
    return str(_("yes") if value else _("no"))


def why(exc: ValidationError | PermissionDenied) -> str:
    """A service's refusal in one line, without the field names (they mean nothing on a queue)."""
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return error_text(exc)


def add_service_errors(form: forms.Form, exc: ValidationError) -> None:
    """A service's ``ValidationError`` as form errors: next to the field it names, else on top."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.error_dict.items():
        if field in form.fields:
            form.add_error(field, errors)
        else:
            form.add_error(None, ValidationError(errors).messages if field != NON_FIELD_ERRORS else errors)


def names_field(exc: Exception, field: str) -> bool:
    return isinstance(exc, ValidationError) and field in getattr(exc, "error_dict", {})


class UrlPattern:
    """``reverse`` once per page (or not at all without the permission to follow the link)."""

    PLACEHOLDER = "__id__"

    def __init__(self, name: str, *, allowed: bool, current_app: str):
        self.pattern = reverse(name, args=[self.PLACEHOLDER], current_app=current_app) if allowed else ""

    def __call__(self, object_id) -> str:
        return self.pattern.replace(self.PLACEHOLDER, str(object_id)) if self.pattern and object_id else ""


# --- the buttons on a case ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaseAction:
    """One button on a case: the statuses it applies to, who may press it, the service it calls and
    the text it asks for (passed to the service as ``note`` or ``reason``)."""

    name: str
    label: Any
    permission: str
    sources: tuple[str, ...]
    run: Callable[..., Reclaim]  # run(actor=, reclaim=, text=)
    field: str
    field_label: Any
    required: bool = False
    danger: bool = False

    def applies(self, reclaim: Reclaim) -> bool:
        return reclaim.status in self.sources


CASE_ACTIONS = {
    action.name: action
    for action in (
        CaseAction(
            "propose",
            _("Submit for review"),
            "referrals.propose_reclaim",
            (Status.CANDIDATE,),
            lambda *, actor, reclaim, text: svc.reclaim_propose(actor=actor, reclaim=reclaim, note=text),
            field="note",
            field_label=_("Note for the reviewer"),
        ),
        CaseAction(
            "approve",
            _("Approve"),
            "referrals.approve_reclaim",
            tuple(Reclaim.IN_REVIEW),
            lambda *, actor, reclaim, text: svc.reclaim_approve(actor=actor, reclaim=reclaim, reason=text),
            field="reason",
            field_label=_("Why the borrower may be taken back"),
            required=True,
        ),
        CaseAction(
            "reject",
            _("Reject"),
            "referrals.approve_reclaim",
            tuple(Reclaim.OPEN),
            lambda *, actor, reclaim, text: svc.reclaim_reject(actor=actor, reclaim=reclaim, reason=text),
            field="reason",
            field_label=_("Why not"),
            required=True,
            danger=True,
        ),
    )
}


class CaseActionForm(forms.Form):
    """The text a button asks for; prefixed with the button's name, as several are on one page."""

    def __init__(self, *args, action: CaseAction, **kwargs):
        super().__init__(*args, prefix=action.name, **kwargs)
        self.fields[action.field] = forms.CharField(
            label=action.field_label,
            required=action.required,
            max_length=2000,
            widget=forms.Textarea(attrs={"rows": 3, "cols": 60, "data-testid": f"{action.name}-{action.field}"}),
        )


class BulkDecisionForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"),
        max_length=2000,
        help_text=_("One reason for every selected case; it is kept on each case's timeline."),
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80, "data-testid": "bulk-reason"}),
    )


# --- the review queue -----------------------------------------------------------------------------
class ReviewStatusFilter(admin.SimpleListFilter):
    """By default the queue shows the cases waiting for a decision; any status, or all, on request."""

    title = _("status")
    parameter_name = "status"
    WAITING = "waiting"
    ALL = "all"

    def lookups(self, request, model_admin):
        return [
            (self.WAITING, _("Waiting for a decision")),
            *((code, label) for code, label in Status.choices),
            (self.ALL, _("All")),
        ]

    def value(self):
        return super().value() or self.WAITING

    def queryset(self, request, queryset):
        value = self.value()
        if value == self.ALL:
            return queryset
        if value in Status.values:
            return queryset.filter(status=value)
        return queryset.filter(status__in=Reclaim.IN_REVIEW)

    def choices(self, changelist):
        # Every choice sets the parameter: without it the default (waiting) applies.
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


@admin.register(Reclaim)
class ReclaimAdmin(ReadOnlyAdmin):
    change_list_template = "admin/referrals/reclaim/change_list.html"
    case_template = "admin/referrals/reclaim/case.html"
    bulk_template = "admin/referrals/reclaim/bulk.html"
    list_display = (
        "partner_code",
        "loan_display",
        "status_display",
        "found_at",
        "ontime_display",
        "proposed_by_display",
        "status_reason",
    )
    list_display_links = ("loan_display",)
    list_filter = (ReviewStatusFilter, "partner")
    list_select_related = ("partner", "loan", "proposed_by")
    ordering = ("created_at",)  # oldest first: the (status, created_at) index serves the queue
    search_fields = ("=loan__loan_id",)
    search_help_text = _("The partner's exact loan id.")
    actions = ("approve_selected", "reject_selected")

    # --- columns -------------------------------------------------------------------------------
    @admin.display(description=_("partner"), ordering="partner__code")
    def partner_code(self, reclaim: Reclaim) -> str:
        return reclaim.partner.code

    @admin.display(description=_("partner's loan id"), ordering="loan__loan_id")
    def loan_display(self, reclaim: Reclaim) -> str:
        return reclaim.loan.loan_id

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, reclaim: Reclaim) -> SafeString:
        return format_html(
            '<span class="reclaim-status reclaim-status-{}" data-status="{}">{}</span>',
            reclaim.status,
            reclaim.status,
            status_label(reclaim.status),
        )

    @admin.display(description=_("found at"), ordering="created_at")
    def found_at(self, reclaim: Reclaim) -> str:
        return shanghai_time(reclaim.created_at)

    @admin.display(description=_("paid on time / required"))
    def ontime_display(self, reclaim: Reclaim) -> str:
        return ontime_text(reclaim.evidence or {})

    @admin.display(description=_("proposed by"), ordering="proposed_by__username")
    def proposed_by_display(self, reclaim: Reclaim) -> str:
        return reclaim.proposed_by.get_username() if reclaim.proposed_by_id else EMPTY

    def changelist_view(self, request, extra_context=None):
        user = request.user
        extra_context = {
            **(extra_context or {}),
            "scan_url": self._url("scan") if user.has_perm("referrals.propose_reclaim") else "",
            "near_miss_url": (
                reverse("admin:referrals_reclaimnearmiss_changelist", current_app=self.admin_site.name)
                if user.has_perm("referrals.view_reclaimnearmiss")
                else ""
            ),
        }
        if extra_context["near_miss_url"]:
            # Replaced by each scan, but as large as the loan book can make it: counted like a changelist.
            near_misses = EstimatedCountPaginator(ReclaimNearMiss.objects.order_by("pk"), per_page=1)
            count = near_misses.count
            extra_context["near_miss_count"] = (
                f"{count}+"
                if near_misses.capped
                else gettext("about %(count)s") % {"count": count}
                if near_misses.estimated
                else count
            )
        return super().changelist_view(request, extra_context)

    # --- urls ----------------------------------------------------------------------------------
    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("scan/", wrap(self.scan_view), name="{}_{}_scan".format(*info)),
            path("<path:object_id>/act/<slug:name>/", wrap(self.action_view), name="{}_{}_act".format(*info)),
            *super().get_urls(),
        ]

    def _url(self, name: str, *args) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=args, current_app=self.admin_site.name
        )

    def _reclaim(self, request, object_id) -> Reclaim:
        """The case with everything its page names (one query), or 404; 403 without view permission."""
        try:
            pk = uuid.UUID(str(unquote(object_id)))
        except ValueError:
            raise Http404 from None
        reclaim = (
            self.get_queryset(request)
            .select_related(
                "partner", "loan", "referral__applicant", "contract", "consent", "proposed_by", "decided_by"
            )
            .filter(pk=pk)
            .first()
        )
        if reclaim is None:
            raise Http404
        if not self.has_view_permission(request, reclaim):
            raise PermissionDenied
        return reclaim

    # --- scan now ------------------------------------------------------------------------------
    def scan_view(self, request):
        """POST only: the nightly scan, now and in this request (it reports what it found)."""
        if not (self.has_view_permission(request) and request.user.has_perm("referrals.propose_reclaim")):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        result = svc.reclaims_scan()
        self.message_user(
            request,
            _(
                "Scan done: %(candidates)d new candidates, %(near_misses)d near misses, %(blocked)d open cases "
                "blocked, %(reclaimed)d handed back."
            )
            % result.as_dict(),
            messages.SUCCESS,
        )
        return HttpResponseRedirect(self._url("changelist"))

    # --- bulk decisions ------------------------------------------------------------------------
    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm("referrals.approve_reclaim")

    @admin.action(description=_("Approve selected reclaims"), permissions=["approve"])
    def approve_selected(self, request, queryset):
        return self._decide(request, queryset, "approve")

    @admin.action(description=_("Reject selected reclaims"), permissions=["approve"])
    def reject_selected(self, request, queryset):
        return self._decide(request, queryset, "reject")

    def _decide(self, request, queryset, decision: str):
        """Ask for one reason (a page between the list and the decision), then decide each case."""
        chosen = list(
            queryset.select_related("partner", "loan", "proposed_by").order_by("created_at")[: BULK_LIMIT + 1]
        )
        if len(chosen) > BULK_LIMIT:
            self.message_user(
                request,
                _("Select at most %(limit)d reclaims at a time.") % {"limit": BULK_LIMIT},
                messages.ERROR,
            )
            return None
        form = BulkDecisionForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            result = svc.reclaims_bulk(
                actor=request.user, reclaims=chosen, decision=decision, reason=form.cleaned_data["reason"]
            )
            refused = result["refused"]
            if refused and not result["done"] and all(names_field(exc, "reason") for _case, exc in refused):
                add_service_errors(form, refused[0][1])  # the reason itself was refused: ask again
            else:
                self._report(request, decision, result)
                return None  # back to the list, its filters kept
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": _("Approve reclaims") if decision == "approve" else _("Reject reclaims"),
            "opts": self.opts,
            "decision": decision,
            "action": f"{decision}_selected",
            "button": _("Approve") if decision == "approve" else _("Reject"),
            "form": form,
            "cases": [
                {
                    "pk": reclaim.pk,
                    "partner": reclaim.partner.code,
                    "loan": reclaim.loan.loan_id,
                    "status": reclaim.status,
                    "status_label": status_label(reclaim.status),
                    "ontime": ontime_text(reclaim.evidence or {}),
                    "proposed_by": reclaim.proposed_by.get_username() if reclaim.proposed_by_id else EMPTY,
                    "found_at": shanghai_time(reclaim.created_at),
                }
                for reclaim in chosen
            ],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": request.get_full_path(),
        }
        return TemplateResponse(request, self.bulk_template, context)

    def _report(self, request, decision: str, result: dict) -> None:
        done, refused = result["done"], result["refused"]
        if done:
            listed = ", ".join(case_label(reclaim) for reclaim in done[:REFUSALS_LISTED])
            if len(done) > REFUSALS_LISTED:
                listed += " …"
            if decision == "approve":
                text = ngettext(
                    "%(count)d reclaim approved (%(list)s); the partner will be notified.",
                    "%(count)d reclaims approved (%(list)s); the partners will be notified.",
                    len(done),
                )
            else:
                text = ngettext(
                    "%(count)d reclaim rejected (%(list)s).", "%(count)d reclaims rejected (%(list)s).", len(done)
                )
            self.message_user(request, text % {"count": len(done), "list": listed}, messages.SUCCESS)
        for reclaim, exc in refused[:REFUSALS_LISTED]:
            text = (
                _("%(reclaim)s not approved: %(why)s")
                if decision == "approve"
                else _("%(reclaim)s not rejected: %(why)s")
            )
            self.message_user(request, text % {"reclaim": case_label(reclaim), "why": why(exc)}, messages.ERROR)
        if len(refused) > REFUSALS_LISTED:
            self.message_user(
                request, _("… and %(more)d more.") % {"more": len(refused) - REFUSALS_LISTED}, messages.ERROR
            )

    # --- a case's page -------------------------------------------------------------------------
    def change_view(self, request, object_id, form_url="", extra_context=None):
        return self.case_page(request, self._reclaim(request, object_id), extra_context=extra_context)

    def case_page(self, request, reclaim: Reclaim, *, bound: CaseActionForm | None = None, extra_context=None):
        user, app = request.user, self.admin_site.name
        actions = []
        for action in self.allowed_actions(request, reclaim):
            form = bound if bound is not None and bound.prefix == action.name else CaseActionForm(action=action)
            actions.append({"action": action, "form": form, "url": self._url("act", reclaim.pk, action.name)})
        approving = any(item["action"].name == "approve" for item in actions)
        request.current_app = app
        context = {
            **self.admin_site.each_context(request),
            "title": _("Reclaim %(partner)s %(loan)s")
            % {"partner": reclaim.partner.code, "loan": reclaim.loan.loan_id},
            "opts": self.opts,
            "original": reclaim,
            "reclaim": reclaim,
            "status_label": status_label(reclaim.status),
            "facts": self.facts(request, reclaim),
            "evidence": self.evidence_rows(request, reclaim),
            "repayments": self.repayment_rows(reclaim),
            "rules": self.rule_rows(reclaim),
            "transitions": self.timeline(reclaim) if user.has_perm("referrals.view_reclaimtransition") else None,
            "notice": self.notice(request, reclaim) if user.has_perm("referrals.view_dispatch") else None,
            "can_see_notice": user.has_perm("referrals.view_dispatch"),
            "actions": actions,
            "four_eyes": approving and reclaim.proposed_by_id == user.pk,
            "changelist_url": self._url("changelist"),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.case_template, context)

    def allowed_actions(self, request, reclaim: Reclaim) -> list[CaseAction]:
        return [a for a in CASE_ACTIONS.values() if a.applies(reclaim) and request.user.has_perm(a.permission)]

    def facts(self, request, reclaim: Reclaim) -> list[dict]:
        """Who and what the case is about, with links to the pages the user may open."""
        user, app = request.user, self.admin_site.name

        def link(name: str, permission: str, object_id) -> str:
            return UrlPattern(name, allowed=user.has_perm(permission), current_app=app)(object_id)

        def who(person, moment) -> str:
            if moment is None:
                return EMPTY
            return f"{person.get_username() if person is not None else _('system')} · {shanghai_time(moment)}"

        applicant = reclaim.referral.applicant
        rows = [
            {
                "key": "partner",
                "label": _("partner"),
                "value": f"{reclaim.partner.code} {reclaim.partner.name}",
                "url": link("admin:partners_partner_change", "partners.view_partner", reclaim.partner_id),
            },
            {
                "key": "loan",
                "label": _("partner's loan id"),
                "value": reclaim.loan.loan_id,
                "url": link("admin:referrals_loan_change", "referrals.view_loan", reclaim.loan_id),
            },
            {
                "key": "referral",
                "label": _("referral"),
                "value": short_id(reclaim.referral_id),
                "url": link("admin:referrals_referral_change", "referrals.view_referral", reclaim.referral_id),
            },
            {
                # Masked: the borrower's data in clear goes to origination only, through the API.
                "key": "borrower",
                "label": _("borrower"),
                "value": f"{applicant.name_masked} · {applicant.phone_masked} · {applicant.external_id}",
                "url": "",
            },
            {"key": "found_at", "label": _("found at"), "value": shanghai_time(reclaim.created_at), "url": ""},
            {
                "key": "proposed_by",
                "label": _("proposed by"),
                "value": reclaim.proposed_by.get_username() if reclaim.proposed_by_id else EMPTY,
                "url": "",
            },
            {
                "key": "decided",
                "label": _("approved or rejected by"),
                "value": who(reclaim.decided_by, reclaim.decided_at),
                "url": "",
            },
        ]
        if reclaim.effective_date:
            rows.append(
                {"key": "effective_date", "label": _("effective date"), "value": str(reclaim.effective_date), "url": ""}
            )
        for key, label in (
            ("notified_at", _("notified at")),
            ("acknowledged_at", _("acknowledged at")),
            ("reclaimed_at", _("reclaimed at")),
        ):
            if getattr(reclaim, key):
                rows.append({"key": key, "label": label, "value": shanghai_time(getattr(reclaim, key)), "url": ""})
        return rows

    def evidence_rows(self, request, reclaim: Reclaim) -> list[dict]:
        """What qualified the loan when the scan found it, as kept with the case."""
        user, app = request.user, self.admin_site.name
        evidence = reclaim.evidence or {}
        contract = evidence.get("contract") or {}
        consent = evidence.get("consent") or {}
        consent_labels = dict(Consent.Status.choices)
        contract_url = UrlPattern(
            "admin:partners_contract_change", allowed=user.has_perm("partners.view_contract"), current_app=app
        )(contract.get("id"))
        consent_url = UrlPattern(
            "admin:referrals_consent_change", allowed=user.has_perm("referrals.view_consent"), current_app=app
        )(consent.get("id"))
        version = contract.get("version")
        return [
            {"key": "checked-at", "label": _("checked at"), "value": iso_time(evidence.get("checked_at"))},
            {
                "key": "contract",
                "label": _("contract version"),
                "value": f"{reclaim.partner.code} v{version}" if version is not None else EMPTY,
                "url": contract_url,
            },
            {"key": "allowed", "label": _("reclaims allowed"), "value": yes_no(contract.get("allowed"))},
            {
                "key": "min-ontime",
                "label": _("instalments paid on time required"),
                "value": contract.get("min_ontime_installments", EMPTY),
            },
            {"key": "fee", "label": _("reclaim fee"), "value": contract.get("fee") or EMPTY},
            {
                "key": "non-solicit-days",
                "label": _("non-solicit period (days)"),
                "value": contract.get("non_solicit_days", EMPTY),
            },
            {"key": "ontime", "label": _("paid on time / required"), "value": ontime_text(evidence)},
            {"key": "overdue", "label": _("overdue reported"), "value": yes_no(evidence.get("overdue_reported"))},
            {
                "key": "accepted-at",
                "label": _("accepted by the partner at"),
                "value": iso_time(evidence.get("accepted_at")),
            },
            {
                "key": "non-solicit-until",
                "label": _("non-solicit until"),
                "value": iso_time(evidence.get("non_solicit_until")),
            },
            {
                "key": "consent-status",
                "label": _("consent"),
                "value": str(consent_labels.get(consent.get("status"), consent.get("status") or EMPTY)),
                "url": consent_url,
            },
            {
                "key": "consent-purposes",
                "label": _("purposes"),
                "value": labelled(consent.get("purposes"), PURPOSE_LABELS),
            },
            {"key": "consent-expires-at", "label": _("expires at"), "value": iso_time(consent.get("expires_at"))},
        ]

    @staticmethod
    def repayment_rows(reclaim: Reclaim) -> list[dict]:
        return [
            {
                "installment": row.get("installment"),
                "due_date": row.get("due_date") or EMPTY,
                "paid_date": row.get("paid_date") or EMPTY,
                "on_time": bool(row.get("on_time")),
                "interest": row.get("interest") or EMPTY,
            }
            for row in (reclaim.evidence or {}).get("repayments") or []
        ]

    @staticmethod
    def rule_rows(reclaim: Reclaim) -> list[dict]:
        """Every rule, checked again now (one query): what holds and, for what does not, why."""
        facts = svc.facts_for(reclaim.loan_id, timezone.now())
        failing = dict(svc.failures(facts))
        return [
            {
                "code": rule.code,
                "label": rule.label,
                "ok": rule.code not in failing,
                "detail": failing.get(rule.code, ""),
            }
            for rule in svc.RULES
        ]

    @staticmethod
    def timeline(reclaim: Reclaim) -> list[dict]:
        return [
            {
                "at": shanghai_time(step.at),
                "by": step.by.get_username() if step.by_id else _("system"),
                "source": status_label(step.source),
                "target": status_label(step.target),
                "target_code": step.target,
                # System notes are recorded in English and translated here when the catalog knows them.
                "note": gettext(step.note) if step.note else "",
            }
            for step in reclaim.transitions.select_related("by").order_by("at", "id")
        ]

    def notice(self, request, reclaim: Reclaim) -> dict | None:
        """The partner notice in the outbox (queued by the approval), if any."""
        dispatch = Dispatch.objects.filter(kind=Dispatch.Kind.RECLAIM_NOTICE, idempotency_key=str(reclaim.pk)).first()
        if dispatch is None:
            return None
        return {
            "dispatch": dispatch,
            "status_label": dispatch.get_status_display(),
            "url": reverse("admin:referrals_dispatch_change", args=[dispatch.pk], current_app=self.admin_site.name),
            "next_attempt_at": shanghai_time(dispatch.next_attempt_at)
            if dispatch.status == Dispatch.Status.PENDING
            else EMPTY,
            "completed_at": shanghai_time(dispatch.completed_at),
        }

    def action_view(self, request, object_id, name):
        """POST only: one step through its service, then back to the case with a message. A missing
        or refused reason shows next to its field instead."""
        action = CASE_ACTIONS.get(name)
        if action is None:
            raise Http404
        reclaim = self._reclaim(request, object_id)
        if not request.user.has_perm(action.permission):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        change_url = self._url("change", reclaim.pk)
        label = case_label(reclaim)
        if not action.applies(reclaim):
            self.message_user(
                request,
                _("%(reclaim)s is %(status)s: “%(action)s” does not apply.")
                % {"reclaim": label, "status": status_label(reclaim.status), "action": action.label},
                messages.ERROR,
            )
            return HttpResponseRedirect(change_url)
        form = CaseActionForm(request.POST, action=action)
        if not form.is_valid():
            return self.case_page(request, reclaim, bound=form)
        try:
            done = action.run(actor=request.user, reclaim=reclaim, text=form.cleaned_data[action.field])
        except ValidationError as exc:
            if names_field(exc, action.field):
                add_service_errors(form, exc)
                return self.case_page(request, reclaim, bound=form)
            self.message_user(request, f"{label}: {why(exc)}", messages.ERROR)
        except PermissionDenied as exc:
            self.message_user(request, f"{label}: {why(exc)}", messages.ERROR)
        else:
            self.message_user(
                request,
                _("%(reclaim)s is now %(status)s.") % {"reclaim": label, "status": status_label(done.status)},
                messages.SUCCESS,
            )
        return HttpResponseRedirect(change_url)


# --- near misses ----------------------------------------------------------------------------------
class NearMissRuleFilter(admin.SimpleListFilter):
    """The rules by name (a DISTINCT over the table would be a scan per page)."""

    title = _("failing rule")
    parameter_name = "rule"

    def lookups(self, request, model_admin):
        return [(rule.code, rule.label) for rule in svc.RULES]

    def queryset(self, request, queryset):
        return queryset.filter(rule=self.value()) if self.value() else queryset


@admin.register(ReclaimNearMiss)
class ReclaimNearMissAdmin(ReadOnlyAdmin):
    """Loans that passed every reclaim rule but one at the last scan (each scan replaces the list)."""

    list_display = ("loan_display", "partner_code", "rule_display", "detail_display", "checked_display")
    list_display_links = None
    list_filter = (NearMissRuleFilter, "partner")
    list_select_related = ("loan", "partner")
    ordering = ("rule", "loan_id")
    search_fields = ("=loan__loan_id",)
    search_help_text = _("The partner's exact loan id.")
    fields = ("loan_display", "partner_code", "rule_display", "detail_display", "checked_display")
    readonly_fields = fields

    @admin.display(description=_("partner's loan id"), ordering="loan__loan_id")
    def loan_display(self, miss: ReclaimNearMiss) -> SafeString:
        return format_html(
            '<a class="loan-link" href="{}">{}</a>',
            reverse("admin:referrals_loan_change", args=[miss.loan_id]),
            miss.loan.loan_id,
        )

    @admin.display(description=_("partner"), ordering="partner__code")
    def partner_code(self, miss: ReclaimNearMiss) -> str:
        return miss.partner.code

    @admin.display(description=_("failing rule"), ordering="rule")
    def rule_display(self, miss: ReclaimNearMiss) -> SafeString:
        return format_html(
            '<span class="near-miss-rule" data-rule="{}">{}</span>', miss.rule, RULE_LABELS.get(miss.rule, miss.rule)
        )

    @admin.display(description=_("detail"))
    def detail_display(self, miss: ReclaimNearMiss) -> str:
        return gettext(miss.detail)  # recorded in English; fixed sentences have a translation

    @admin.display(description=_("checked at"), ordering="checked_at")
    def checked_display(self, miss: ReclaimNearMiss) -> str:
        return shanghai_time(miss.checked_at)
