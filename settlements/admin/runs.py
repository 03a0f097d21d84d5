"""Settlement runs: start one for a month, watch its progress, open the statements it produced.

Starting a run goes through ``run_start`` (the same service as the API); the run's page polls the
API (``GET /api/v1/settlements/runs/<id>/``, with the admin's session) from a static script, so the
page needs no inline JavaScript."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from config.admin_tools import EMPTY, ReadOnlyAdmin
from referrals.admin.display import shanghai_time
from settlements import periods
from settlements.admin.display import statement_status_labels
from settlements.models import SettlementRun
from settlements.services.runs import run_start

POLL_INTERVAL_MS = 500


def percent(run: SettlementRun) -> int:
    return max(0, min(100, round((run.progress or 0) * 100)))


def add_service_errors(form: forms.Form, exc: ValidationError) -> None:
    """A service's ``ValidationError`` as form errors: next to the field it names, else on top."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.error_dict.items():
        if field in form.fields:
            form.add_error(field, errors)
        elif field == NON_FIELD_ERRORS:
            form.add_error(None, errors)
        else:
            form.add_error(None, [f"{field}: {message}" for message in ValidationError(errors).messages])


class RunForm(forms.Form):
    period = forms.CharField(
        label=_("Period"),
        max_length=7,
        help_text=_("The calendar month to settle (Asia/Shanghai), written YYYY-MM, e.g. 2026-11."),
        widget=forms.TextInput(
            attrs={"size": 8, "autocomplete": "off", "placeholder": "YYYY-MM", "data-testid": "run-period"}
        ),
    )


@admin.register(SettlementRun)
class SettlementRunAdmin(ReadOnlyAdmin):
    change_list_template = "admin/settlements/settlementrun/change_list.html"
    add_form_template = "admin/settlements/settlementrun/add_form.html"
    run_template = "admin/settlements/settlementrun/run.html"
    list_display = ("period", "status_display", "progress_bar", "started_by", "created_at", "finished_at")
    list_display_links = ("period",)
    list_filter = ("status",)
    list_select_related = ("started_by",)
    ordering = ("-created_at",)
    search_fields = ("=period",)
    search_help_text = _("A month, written YYYY-MM.")

    def has_add_permission(self, request):
        return request.user.has_perm("settlements.run_settlement")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("started_by")

    # --- columns -------------------------------------------------------------------------------
    @admin.display(description=_("status"), ordering="status")
    def status_display(self, run: SettlementRun) -> SafeString:
        return format_html('<span class="run-status run-status-{}">{}</span>', run.status, run.get_status_display())

    @admin.display(description=_("progress"), ordering="progress")
    def progress_bar(self, run: SettlementRun) -> SafeString:
        value = percent(run)
        return format_html(
            '<progress class="run-progress" max="100" value="{}">{}%</progress> <span class="run-percent">{}%</span>',
            value,
            value,
            value,
        )

    # --- start a run ---------------------------------------------------------------------------
    def add_view(self, request, form_url="", extra_context=None):
        """A one-field form: the month. ``run_start`` validates it; its errors show next to the field."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = RunForm(request.POST)
            if form.is_valid():
                try:
                    with transaction.atomic():  # the worker is queued once this commits
                        run = run_start(period=form.cleaned_data["period"].strip(), user=request.user)
                except ValidationError as exc:
                    add_service_errors(form, exc)
                except PermissionDenied as exc:
                    form.add_error(None, str(exc) or _("You do not have permission to do this."))
                else:
                    self.message_user(
                        request,
                        _("The settlement run for %(period)s has started.") % {"period": run.period},
                        messages.SUCCESS,
                    )
                    return HttpResponseRedirect(self._url("change", run.pk))
        else:
            form = RunForm(initial={"period": periods.shift(periods.of(timezone.now()), -1)})
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": _("Start a settlement run"),
            "opts": self.opts,
            "form": form,
            "changelist_url": self._url("changelist"),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.add_form_template, context)

    # --- a run's page --------------------------------------------------------------------------
    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The run's progress (updated by ``settlements/run_progress.js``) and, once it has
        finished, links to the statements it produced."""
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        request.current_app = self.admin_site.name
        finished = run.status != SettlementRun.Status.RUNNING
        context = {
            **self.admin_site.each_context(request),
            "title": _("Settlement run %(period)s") % {"period": run.period},
            "opts": self.opts,
            "original": run,
            "run": run,
            "percent": percent(run),
            "finished": finished,
            "started_at": shanghai_time(run.created_at),
            "finished_at": shanghai_time(run.finished_at),
            "statements": self.statement_rows(run.summary) if finished else [],
            "poll_url": reverse("settlement-run-detail", args=[run.pk]),
            "poll_interval": POLL_INTERVAL_MS,
            "statement_url": self._statement_url("__id__"),
            "labels": self.script_labels(),
            "changelist_url": self._url("changelist"),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.run_template, context)

    def statement_rows(self, summary) -> list[dict]:
        labels = statement_status_labels()
        rows = []
        for item in summary or []:
            if not isinstance(item, dict) or not item.get("statement"):
                continue
            rows.append(
                {
                    "id": item["statement"],
                    "url": self._statement_url(item["statement"]),
                    "partner": item.get("partner", EMPTY),
                    "status": labels.get(item.get("status"), item.get("status", EMPTY)),
                    "computed": bool(item.get("computed")),
                    "lines": item.get("lines", 0),
                    "gross": item.get("gross", EMPTY),
                }
            )
        return rows

    @staticmethod
    def script_labels() -> dict:
        """What ``run_progress.js`` writes on the page, translated here (the script has no catalogue)."""
        return {
            "run_status": {value: str(label) for value, label in SettlementRun.Status.choices},
            "statement_status": statement_status_labels(),
            "lines": str(_("lines")),
            "gross": str(_("gross")),
            "not_computed": str(_("left as it is (no longer a draft)")),
            "no_statements": str(_("No statement was produced.")),
            "poll_failed": str(_("The progress could not be read; reload the page to try again.")),
        }

    def _url(self, name: str, *args) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=args,
            current_app=self.admin_site.name,
        )

    def _statement_url(self, statement_id) -> str:
        return reverse("admin:settlements_statement_change", args=[statement_id], current_app=self.admin_site.name)
