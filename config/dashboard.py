"""The admin landing page's panels: one selector per panel, each a few aggregate queries over a
bounded window of an indexed timestamp column, cached for ``TTL`` seconds.

It lives in ``config`` (next to ``roles`` and ``admin_tools``) because its panels cross the apps:
referrals, partners and settlements. The template tag ``{% dashboard_panels %}``
(``config/templatetags/dashboard.py``) picks the panels a user may see — from permissions, never
from group names — and calls these selectors.

Cost per panel, whatever the size of the tables (each result is cached ``TTL`` seconds, the cheap
rollup: at most one computation per panel per minute, however many people open the page):

* funnel — referrals created in the last ``DAYS`` days (``referral_status_created_idx`` / ``referral_created_idx``),
  counted per partner with conditional aggregates, left-joined to their loans: one query;
* referrals per day — the same window grouped by Shanghai day: one query;
* revenue per month — :func:`settlements.selectors.monthly_revenue` (statements, one row per
  partner and month): one query;
* consents — ledger events ``granted``/``withdrawn`` recorded in the window (``recorded_at`` is
  indexed) grouped by day: one query;
* dispatch health — partners and circuits (small tables), attempts of the last 24 h
  (``attempt_started_idx``) for the error rate, the queue per partner
  (``dispatch_partner_idx``: status, created_at) and latency percentiles over the last hour;
* reclaims — review queue counted by status (``reclaim_status_idx``): one query.

Percentiles: on PostgreSQL ``percentile_cont(p) WITHIN GROUP (ORDER BY duration_ms)`` per partner.
SQLite has no such aggregate: there, one query numbers each partner's attempts of the last hour by
duration (``ROW_NUMBER() OVER (PARTITION BY partner ORDER BY duration_ms)`` with the partition's
``COUNT(*)``) and keeps only the two rows around each percentile's position ``p·(n−1)`` — the
ORDER BY + OFFSET of a percentile row, for every partner at once — and Python interpolates between
them, exactly as ``percentile_cont`` does. So both backends give the same figures, and SQLite reads
at most four rows per partner back.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Aggregate, Count, FloatField, Min, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from partners.models import Partner, PartnerCircuit
from referrals.models import ConsentEvent, Dispatch, DispatchAttempt, Reclaim, Referral
from settlements import periods
from settlements.selectors import monthly_revenue

TTL = 60  # seconds a panel is served from the cache
DAYS = 30  # per-day series and the funnel's cohort
MONTHS = 12  # revenue
HEALTH_WINDOW = datetime.timedelta(hours=24)  # error rate
LATENCY_WINDOW = datetime.timedelta(hours=1)  # p50/p95
PERCENTILES = (0.5, 0.95)
CACHE_PREFIX = "dashboard:v1:"

# Attempts that reached the partner (refused and deferred ones never left: no latency, no error).
CALLED = (DispatchAttempt.Outcome.SUCCESS, DispatchAttempt.Outcome.TRANSIENT, DispatchAttempt.Outcome.PERMANENT)
ERRORS = (DispatchAttempt.Outcome.TRANSIENT, DispatchAttempt.Outcome.PERMANENT)
FUNNEL_STAGES = ("referred", "probe_accepted", "submitted", "approved", "disbursed")


def cached(name: str, compute: Callable[[], Any]) -> Any:
    """The panel's figures from the cache, or computed and kept for ``TTL`` seconds."""
    key = CACHE_PREFIX + name
    value = cache.get(key)
    if value is None:
        value = compute()
        cache.set(key, value, TTL)
    return value


def clear() -> None:
    """Forget every cached panel (tests; after a bulk correction)."""
    cache.delete_many([CACHE_PREFIX + name for name in PANELS])


def _today() -> datetime.date:
    return timezone.localdate(timezone.now(), periods.SHANGHAI)


def _days() -> tuple[list[datetime.date], datetime.datetime]:
    """The last ``DAYS`` Shanghai days (today included) and the moment the first one starts."""
    today = _today()
    days = [today - datetime.timedelta(days=offset) for offset in range(DAYS - 1, -1, -1)]
    since = datetime.datetime.combine(days[0], datetime.time.min, tzinfo=periods.SHANGHAI)
    return days, since


# --- funnel -----------------------------------------------------------------------------------
def funnel() -> dict:
    """Per partner, the referrals created in the last ``DAYS`` days and how far they went:
    referred → probe accepted → application submitted → loan approved → loan disbursed."""
    _, since = _days()
    rows = (
        Referral.objects.filter(created_at__gte=since)
        .values("partner__code")
        .annotate(
            referred=Count("pk", distinct=True),
            probe_accepted=Count(
                "pk",
                distinct=True,
                filter=Q(probe_answered_at__isnull=False) & ~Q(status=Referral.Status.PROBE_DECLINED),
            ),
            submitted=Count("pk", distinct=True, filter=Q(submitted_at__isnull=False)),
            approved=Count("pk", distinct=True, filter=Q(loans__approved_at__isnull=False)),
            disbursed=Count("pk", distinct=True, filter=Q(loans__disbursed_at__isnull=False)),
        )
        .order_by("partner__code")
    )
    partners = [{"partner": row["partner__code"], **{stage: row[stage] for stage in FUNNEL_STAGES}} for row in rows]
    totals = {stage: sum(p[stage] for p in partners) for stage in FUNNEL_STAGES}
    return {"since": since.date().isoformat(), "partners": partners, "totals": totals}


# --- referrals per day ------------------------------------------------------------------------
def referrals_per_day() -> dict:
    """How many referrals were created each Shanghai day of the last ``DAYS`` days."""
    days, since = _days()
    counts = dict(
        Referral.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at", tzinfo=periods.SHANGHAI))
        .values("day")
        .annotate(count=Count("pk"))
        .order_by()
        .values_list("day", "count")
    )
    series = [{"day": day.isoformat(), "count": counts.get(day, 0)} for day in days]
    return {"days": series, "total": sum(item["count"] for item in series)}


# --- revenue ----------------------------------------------------------------------------------
def revenue() -> dict:
    """Gross revenue (every statement, drafts included) per month over ``MONTHS`` months."""
    result = monthly_revenue(last=periods.of(timezone.now()), months=MONTHS)
    months = [
        {"period": period, "gross": str(amount)} for period, amount in zip(result.periods, result.totals, strict=True)
    ]
    return {"months": months, "total": str(result.total), "chart": result.chart_data()}


# --- consents ---------------------------------------------------------------------------------
def consents() -> dict:
    """Consents granted and withdrawn each Shanghai day of the last ``DAYS`` days, from the ledger."""
    days, since = _days()
    wanted = (ConsentEvent.Type.GRANTED, ConsentEvent.Type.WITHDRAWN)
    rows = (
        ConsentEvent.objects.filter(recorded_at__gte=since, occurred_at__gte=since, type__in=wanted)
        .annotate(day=TruncDate("occurred_at", tzinfo=periods.SHANGHAI))
        .values("day", "type")
        .annotate(count=Count("pk"))
        .order_by()
    )
    counts = {(row["day"], row["type"]): row["count"] for row in rows}
    series = [
        {
            "day": day.isoformat(),
            "granted": counts.get((day, ConsentEvent.Type.GRANTED), 0),
            "withdrawn": counts.get((day, ConsentEvent.Type.WITHDRAWN), 0),
        }
        for day in days
    ]
    return {
        "days": series,
        "granted": sum(item["granted"] for item in series),
        "withdrawn": sum(item["withdrawn"] for item in series),
    }


# --- dispatch health --------------------------------------------------------------------------
class PercentileCont(Aggregate):
    """PostgreSQL's ``percentile_cont(p) WITHIN GROUP (ORDER BY expression)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def _percentiles_postgres(since: datetime.datetime) -> dict[int, dict[str, float]]:
    rows = (
        DispatchAttempt.objects.filter(started_at__gte=since, outcome__in=CALLED)
        .values("dispatch__partner_id")
        .annotate(**{_key(p): PercentileCont("duration_ms", p) for p in PERCENTILES})
        .order_by()
    )
    return {row["dispatch__partner_id"]: {_key(p): row[_key(p)] for p in PERCENTILES} for row in rows}


def _percentiles_ranked(since: datetime.datetime) -> dict[int, dict[str, float]]:
    """``percentile_cont`` without the aggregate: the rows at ⌊p·(n−1)⌋ and ⌈p·(n−1)⌉ of each
    partner's attempts ordered by duration (one query), interpolated here."""
    attempt, dispatch = DispatchAttempt._meta.db_table, Dispatch._meta.db_table
    positions = " OR ".join(
        f"(position >= CAST({p} * (n - 1) AS INTEGER) AND position <= CAST({p} * (n - 1) AS INTEGER) + 1)"
        for p in PERCENTILES
    )
    sql = f"""
        SELECT partner_id, position, n, duration_ms FROM (
            SELECT d.partner_id AS partner_id, a.duration_ms AS duration_ms,
                   ROW_NUMBER() OVER (PARTITION BY d.partner_id ORDER BY a.duration_ms) - 1 AS position,
                   COUNT(*) OVER (PARTITION BY d.partner_id) AS n
            FROM {attempt} a JOIN {dispatch} d ON d.id = a.dispatch_id
            WHERE a.started_at >= %s AND a.outcome IN ({", ".join(["%s"] * len(CALLED))})
        ) ranked
        WHERE {positions}
    """  # noqa: S608 — table names from the models, values as parameters
    rows: dict[int, dict[int, int]] = {}
    sizes: dict[int, int] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [since, *CALLED])
        for partner_id, position, n, duration in cursor.fetchall():
            rows.setdefault(partner_id, {})[position] = duration
            sizes[partner_id] = n
    result = {}
    for partner_id, values in rows.items():
        n = sizes[partner_id]
        result[partner_id] = {}
        for p in PERCENTILES:
            exact = p * (n - 1)
            low = math.floor(exact)
            high = min(low + 1, n - 1)
            fraction = exact - low
            result[partner_id][_key(p)] = values[low] + (values[high] - values[low]) * fraction
    return result


def _key(p: float) -> str:
    return f"p{round(p * 100)}"


def latency_percentiles(since: datetime.datetime) -> dict[int, dict[str, float]]:
    """``{partner_id: {"p50": ms, "p95": ms}}`` over the attempts that reached a partner since ``since``."""
    if connection.vendor == "postgresql":
        return _percentiles_postgres(since)
    return _percentiles_ranked(since)


def dispatch_health() -> dict:
    """Per partner: latency p50/p95 (last hour), error rate and attempts (last 24 h), circuit
    state, queued dispatches and the oldest of them."""
    now = timezone.now()
    partners = list(Partner.objects.order_by("code").values_list("pk", "code"))
    circuits = {
        circuit.partner_id: circuit.state
        for circuit in PartnerCircuit.objects.only("partner_id", "open_until", "consecutive_failures")
    }
    attempts = {
        row["dispatch__partner_id"]: row
        for row in DispatchAttempt.objects.filter(started_at__gte=now - HEALTH_WINDOW, outcome__in=CALLED)
        .values("dispatch__partner_id")
        .annotate(attempts=Count("pk"), errors=Count("pk", filter=Q(outcome__in=ERRORS)))
        .order_by()
    }
    queues = {
        row["partner_id"]: row
        for row in Dispatch.objects.filter(status=Dispatch.Status.PENDING)
        .values("partner_id")
        .annotate(queued=Count("pk"), oldest=Min("created_at"))
        .order_by()
    }
    latency = latency_percentiles(now - LATENCY_WINDOW)
    rows = []
    for partner_id, code in partners:
        tried = attempts.get(partner_id, {})
        queue = queues.get(partner_id, {})
        count, errors = tried.get("attempts", 0), tried.get("errors", 0)
        oldest = queue.get("oldest")
        rows.append({
            "partner": code,
            "p50": _ms(latency.get(partner_id, {}).get("p50")),
            "p95": _ms(latency.get(partner_id, {}).get("p95")),
            "attempts": count,
            "errors": errors,
            "error_rate": round(100 * errors / count, 1) if count else None,
            "circuit": circuits.get(partner_id, "closed"),
            "queued": queue.get("queued", 0),
            "oldest_queued": oldest,
            "oldest_age_minutes": int((now - oldest).total_seconds() // 60) if oldest else None,
        })  # fmt: skip
    return {"partners": rows, "computed_at": now}


def _ms(value: float | None) -> int | None:
    return None if value is None else round(value)


# --- reclaims ---------------------------------------------------------------------------------
def reclaims() -> dict:
    """The reclaim review queue: cases found (candidate) and under review, and the oldest."""
    rows = {
        row["status"]: row
        for row in Reclaim.objects.filter(status__in=Reclaim.IN_REVIEW)
        .values("status")
        .annotate(count=Count("pk"), oldest=Min("created_at"))
        .order_by()
    }
    candidate = rows.get(Reclaim.Status.CANDIDATE, {})
    review = rows.get(Reclaim.Status.UNDER_REVIEW, {})
    oldest = [moment for moment in (candidate.get("oldest"), review.get("oldest")) if moment]
    return {
        "candidate": candidate.get("count", 0),
        "under_review": review.get("count", 0),
        "total": candidate.get("count", 0) + review.get("count", 0),
        "oldest": min(oldest) if oldest else None,
    }


# --- the panels and who sees them -------------------------------------------------------------
# name → (the permissions a user needs, all of them; the selector). The permissions are those that
# let the user read the rows behind the panel, chosen as narrowly as the roles' grants allow.
PANELS: dict[str, tuple[tuple[str, ...], Callable[[], dict]]] = {
    "dispatch_health": (("referrals.view_dispatchattempt", "partners.view_partnercircuit"), dispatch_health),
    "funnel": (("referrals.view_referral", "referrals.view_loan"), funnel),
    "referrals_per_day": (("referrals.view_referral",), referrals_per_day),
    "consents": (("referrals.view_consentevent",), consents),
    "reclaims": (("referrals.view_reclaimtransition",), reclaims),
    "revenue": (("settlements.view_statement",), revenue),
}


def visible_panels(user) -> list[str]:
    """The names of the panels ``user`` may see, in display order."""
    if not (user and user.is_active and user.is_staff):
        return []
    return [name for name, (permissions, _) in PANELS.items() if user.has_perms(permissions)]


def panels_for(user) -> dict[str, dict]:
    """``{panel name: figures}`` for the panels ``user`` may see (cached ``TTL`` seconds each)."""
    return {name: cached(name, PANELS[name][1]) for name in visible_panels(user)}
