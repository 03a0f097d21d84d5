"""Spillway's own Prometheus metrics, served on ``/metrics`` (``config.metrics``).

They live here, next to the models they count, because ``config`` imports no app: ``ReferralsConfig.
ready`` registers :class:`SpillwayCollector` with ``config.metrics.register_collector``, once.

Read from the database at each scrape (a handful of GROUP BY queries on indexed columns, the same
numbers whichever of many web processes answers, and right although Celery workers, which make the
partner calls, serve no metrics themselves):

``spillway_referrals{status}``
    referrals by status (every status, zeros included).
``spillway_dispatch_queue_depth{partner,kind,status}``
    outbox rows ``pending`` or ``in_flight``.
``spillway_dispatch_oldest_pending_seconds{partner}``
    age of the partner's oldest ``pending`` row since it was written — retry back-off included
    (0 when there is none).
``spillway_dispatch_attempts_total{partner,outcome}`` and ``spillway_dispatch_latency_seconds{partner,outcome}``
    partner calls (``DispatchAttempt`` rows) started in the current window: the 15-minute
    period of the wall clock (:data:`ATTEMPT_WINDOW_SECONDS`, ``:00``, ``:15``, ``:30``, ``:45``).
    Within a window they only grow; at its end they start again from 0, which Prometheus reads as
    a counter reset, so ``rate()`` and ``histogram_quantile(…, rate(…_bucket[5m]))`` work as on
    any counter. What a window loses: attempts recorded between the last scrape and its end, and
    calls that started in one window and were recorded in the next. The latency histogram covers
    the outcomes that made a call (``success``, ``transient``, ``permanent``); ``refused`` and
    ``deferred`` attempts sent nothing and last 0 ms.
``spillway_ledger_checkpoint_age_seconds``
    now − the newest ledger checkpoint (absent before the first). The checkpoint task seals only
    when there are new events, so alert on ``spillway_ledger_unsealed_oldest_seconds`` (the age of
    the oldest event no checkpoint covers yet) rather than on this alone.
``spillway_ledger_unsealed_events``
    ledger events after the newest checkpoint.
``spillway_metrics_up``
    1, or 0 when the database could not be read (the others are then absent).

Counted in the process where it happens:

``spillway_callback_rejections_total{reason}``
    partner callbacks refused (:data:`CALLBACK_REJECTION_REASONS`). A plain counter in the web
    process: with several gunicorn workers, set ``PROMETHEUS_MULTIPROC_DIR`` (see
    ``config.metrics``) or each scrape shows only the answering worker's share.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import structlog
from django.db import DatabaseError
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from partners.models import Partner
from referrals.models import ConsentEvent, Dispatch, DispatchAttempt, LedgerCheckpoint, Referral

log = structlog.get_logger(__name__)

ATTEMPT_WINDOW_SECONDS = 15 * 60
# Partner calls time out after at most 60 s (Partner.timeout_ms).
LATENCY_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CALL_OUTCOMES = (DispatchAttempt.Outcome.SUCCESS, DispatchAttempt.Outcome.TRANSIENT, DispatchAttempt.Outcome.PERMANENT)
QUEUED = (Dispatch.Status.PENDING, Dispatch.Status.IN_FLIGHT)

CALLBACK_REJECTION_REASONS = ("bad_signature", "stale", "malformed", "unknown_partner", "unknown_referral", "conflict")
CALLBACK_REJECTIONS = Counter(
    "spillway_callback_rejections",
    "Partner callbacks refused, by reason.",
    ["reason"],
)
for _reason in CALLBACK_REJECTION_REASONS:
    CALLBACK_REJECTIONS.labels(reason=_reason)  # every reason is on the page from the start, at 0


def callback_rejected(reason: str) -> None:
    """Count one refused callback (``reason`` from :data:`CALLBACK_REJECTION_REASONS`)."""
    if reason not in CALLBACK_REJECTION_REASONS:
        raise ValueError(f"unknown callback rejection reason {reason!r}")
    CALLBACK_REJECTIONS.labels(reason=reason).inc()


def window_start(now: datetime.datetime) -> datetime.datetime:
    """The start of the attempt window ``now`` falls in."""
    seconds = now.timestamp()
    return datetime.datetime.fromtimestamp(seconds - seconds % ATTEMPT_WINDOW_SECONDS, tz=datetime.UTC)


def _families() -> dict[str, Metric]:
    return {
        "referrals": GaugeMetricFamily("spillway_referrals", "Referrals by status.", labels=["status"]),
        "queue": GaugeMetricFamily(
            "spillway_dispatch_queue_depth",
            "Outbox rows waiting (pending) or being sent (in_flight).",
            labels=["partner", "kind", "status"],
        ),
        "oldest": GaugeMetricFamily(
            "spillway_dispatch_oldest_pending_seconds",
            "Age of the partner's oldest pending outbox row (0 when none).",
            labels=["partner"],
        ),
        "attempts": CounterMetricFamily(
            "spillway_dispatch_attempts",
            "Partner call attempts started in the current 15-minute window (restarts at 0 each window).",
            labels=["partner", "outcome"],
        ),
        "latency": HistogramMetricFamily(
            "spillway_dispatch_latency_seconds",
            "Partner call duration, for attempts started in the current 15-minute window.",
            labels=["partner", "outcome"],
        ),
        "checkpoint_age": GaugeMetricFamily(
            "spillway_ledger_checkpoint_age_seconds", "Seconds since the newest consent-ledger checkpoint."
        ),
        "unsealed": GaugeMetricFamily(
            "spillway_ledger_unsealed_events", "Consent-ledger events after the newest checkpoint."
        ),
        "unsealed_oldest": GaugeMetricFamily(
            "spillway_ledger_unsealed_oldest_seconds",
            "Age of the oldest consent-ledger event no checkpoint covers yet (0 when none).",
        ),
    }


class SpillwayCollector(Collector):
    """Referrals, the outbox, partner calls and the ledger, read from the database when scraped."""

    def describe(self) -> Iterator[Metric]:
        # Registration asks for the names; without describe() it would run collect() — and the
        # queries — at start-up.
        yield from _families().values()
        yield GaugeMetricFamily("spillway_metrics_up", "")

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._read(timezone.now())
        except DatabaseError:
            log.warning("metrics: the database could not be read", exc_info=True)
            yield GaugeMetricFamily("spillway_metrics_up", "1 when Spillway's metrics could be read.", value=0)
            return
        yield GaugeMetricFamily("spillway_metrics_up", "1 when Spillway's metrics could be read.", value=1)
        yield from families.values()

    def _read(self, now: datetime.datetime) -> dict[str, Metric]:
        families = _families()
        partners = dict(Partner.objects.values_list("id", "code"))

        by_status = dict(Referral.objects.order_by().values_list("status").annotate(n=Count("*")))
        for status in Referral.Status.values:
            families["referrals"].add_metric([status], by_status.get(status, 0))

        queue = {(partner_id, kind, status): (n, oldest) for partner_id, kind, status, n, oldest in (
            Dispatch.objects.filter(status__in=QUEUED).order_by()
            .values_list("partner_id", "kind", "status").annotate(n=Count("*"), oldest=Min("created_at"))
        )}  # fmt: skip
        for partner_id, code in partners.items():
            oldest_pending = None
            for kind in Dispatch.Kind.values:
                for status in QUEUED:
                    n, oldest = queue.get((partner_id, kind, status), (0, None))
                    families["queue"].add_metric([code, kind, status], n)
                    if status == Dispatch.Status.PENDING and oldest is not None:
                        oldest_pending = oldest if oldest_pending is None else min(oldest_pending, oldest)
            age = (now - oldest_pending).total_seconds() if oldest_pending else 0.0
            families["oldest"].add_metric([code], max(age, 0.0))

        start = window_start(now)
        buckets = {
            f"le{i}": Count("id", filter=Q(duration_ms__lte=round(bound * 1000)))
            for i, bound in enumerate(LATENCY_BUCKETS_SECONDS)
        }
        attempts = {
            (row.pop("dispatch__partner_id"), row.pop("outcome")): row
            for row in DispatchAttempt.objects.filter(started_at__gte=start)
            .order_by()
            .values("dispatch__partner_id", "outcome")
            .annotate(n=Count("*"), total_ms=Sum("duration_ms"), **buckets)
        }
        for partner_id, code in partners.items():
            for outcome in DispatchAttempt.Outcome.values:
                row = attempts.get((partner_id, outcome))
                families["attempts"].add_metric([code, outcome], row["n"] if row else 0, created=start.timestamp())
                if outcome not in CALL_OUTCOMES:
                    continue
                cumulative = [
                    (str(bound), row[f"le{i}"] if row else 0) for i, bound in enumerate(LATENCY_BUCKETS_SECONDS)
                ]
                cumulative.append(("+Inf", row["n"] if row else 0))
                families["latency"].add_metric(
                    [code, outcome], cumulative, sum_value=(row["total_ms"] or 0) / 1000 if row else 0.0
                )

        newest = LedgerCheckpoint.objects.order_by("-id").values_list("created_at", "last_event_id").first()
        unsealed = ConsentEvent.objects.filter(id__gt=newest[1]) if newest else ConsentEvent.objects.all()
        waiting = unsealed.aggregate(n=Count("*"), oldest=Min("recorded_at"))
        if newest:
            families["checkpoint_age"].add_metric([], max((now - newest[0]).total_seconds(), 0.0))
        families["unsealed"].add_metric([], waiting["n"])
        oldest_unsealed = waiting["oldest"]
        families["unsealed_oldest"].add_metric(
            [], max((now - oldest_unsealed).total_seconds(), 0.0) if oldest_unsealed else 0.0
        )
        return families
