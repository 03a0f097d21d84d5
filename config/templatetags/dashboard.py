"""``{% dashboard_panels as dashboard %}``: the admin landing page's panels for the request's user.

The panels (figures from :mod:`config.dashboard`, cached a minute) and, for each, what its chart
needs — labels already translated, numbers as numbers or exact decimal strings — which the page
hands to ``static/dashboard/dashboard.js`` through ``json_script``.
"""

from __future__ import annotations

from django import template
from django.utils.translation import gettext as _

from config import dashboard

register = template.Library()


@register.simple_tag(takes_context=True)
def dashboard_panels(context) -> dict:
    request = context.get("request")
    user = getattr(request, "user", None)
    panels = dashboard.panels_for(user) if user is not None else {}
    charts = {f"{name}-chart": CHARTS[name](figures) for name, figures in panels.items() if name in CHARTS}
    return {"panels": panels, "charts": charts, "any": bool(panels)}


def _stage_labels() -> list[str]:
    return [_("Referred"), _("Probe accepted"), _("Submitted"), _("Loan approved"), _("Loan disbursed")]


def _funnel(figures: dict) -> dict:
    return {
        "type": "bar",
        "labels": _stage_labels(),
        "datasets": [
            {"label": row["partner"], "data": [row[stage] for stage in dashboard.FUNNEL_STAGES]}
            for row in figures["partners"]
        ],
    }


def _referrals_per_day(figures: dict) -> dict:
    return {
        "type": "line",
        "labels": [item["day"][5:] for item in figures["days"]],
        "datasets": [{"label": _("Referrals"), "data": [item["count"] for item in figures["days"]]}],
    }


def _consents(figures: dict) -> dict:
    return {
        "type": "bar",
        "labels": [item["day"][5:] for item in figures["days"]],
        "datasets": [
            {"label": _("Granted"), "data": [item["granted"] for item in figures["days"]]},
            {"label": _("Withdrawn"), "data": [item["withdrawn"] for item in figures["days"]]},
        ],
    }


def _revenue(figures: dict) -> dict:
    return {"type": "bar", "stacked": True, **figures["chart"]}


def _dispatch_health(figures: dict) -> dict:
    rows = figures["partners"]
    return {
        "type": "bar",
        "labels": [row["partner"] for row in rows],
        "datasets": [
            {"label": _("p50 latency (ms)"), "data": [row["p50"] for row in rows]},
            {"label": _("p95 latency (ms)"), "data": [row["p95"] for row in rows]},
        ],
    }


CHARTS = {
    "funnel": _funnel,
    "referrals_per_day": _referrals_per_day,
    "consents": _consents,
    "revenue": _revenue,
    "dispatch_health": _dispatch_health,
}
