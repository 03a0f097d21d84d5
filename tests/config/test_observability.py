"""Observability: ``/metrics`` (who may read it, what it says), request ids from the web request into
Celery tasks, and one JSON object per log line with the request id on it."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
from django.core.cache import cache
from django.db import connection
from django.test import RequestFactory
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from config import logs, requestid
from config.metrics import metrics_view
from config.tasks import heartbeat
from partners import signing
from referrals import metrics as spillway_metrics
from referrals.models import Consent, Dispatch, DispatchAttempt, Referral
from referrals.services.ledger import ledger_checkpoint
from tests.factories import PartnerFactory, consent_text, intake_payload, make_contract

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-tests-0123456789"


def scrape(client, **extra) -> str:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    return response.content.decode()


def samples(page: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, frozenset(labels)): value}`` of a Prometheus text page."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def value(page_samples: dict, name: str, **labels) -> float:
    return page_samples[(name, frozenset(labels.items()))]


# --- who may read /metrics ----------------------------------------------------------------------
@pytest.fixture
def production(settings):
    settings.DEBUG = False
    settings.SPILLWAY_METRICS_TOKEN = TOKEN
    return settings


def get_metrics(remote_addr: str, **headers):
    request = RequestFactory().get("/metrics", REMOTE_ADDR=remote_addr, headers=headers)
    return metrics_view(request)


def test_metrics_are_open_to_everyone_in_debug(settings, db):
    settings.DEBUG = True
    assert get_metrics("203.0.113.9").status_code == 200


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_metrics_are_open_from_this_machine(production, db, address):
    assert get_metrics(address).status_code == 200


def test_a_request_relayed_by_a_local_proxy_is_not_local(production, db):
    assert get_metrics("127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 403


def test_metrics_from_elsewhere_need_the_token(production, db):
    assert get_metrics("203.0.113.9").status_code == 403
    assert get_metrics("203.0.113.9", Authorization="Bearer wrong-token").status_code == 403
    assert get_metrics("203.0.113.9", Authorization=f"Token {TOKEN}").status_code == 403
    response = get_metrics("203.0.113.9", Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert b"spillway_referrals" in response.content


def test_no_token_configured_means_no_remote_access(production, db):
    production.SPILLWAY_METRICS_TOKEN = ""
    assert get_metrics("203.0.113.9", Authorization="Bearer ").status_code == 403
    assert get_metrics("203.0.113.9", Authorization="Bearer").status_code == 403


def test_the_token_works_through_the_whole_stack(production, client, db):
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    ok = client.get("/metrics", REMOTE_ADDR="203.0.113.9", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert ok["Content-Type"].startswith("text/plain")


# --- what /metrics says -------------------------------------------------------------------------
@pytest.fixture
def world(db, partnership_manager, compliance_officer, origination, api):
    """Two partners, one applicant referred to both (sealed in a checkpoint ten minutes ago), then a
    second one (not sealed yet): four queued referrals and four pending probes."""
    partners = [PartnerFactory(code="PARTNER_A"), PartnerFactory(code="PARTNER_B")]
    for partner, priority in zip(partners, (20, 10), strict=True):
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer, priority=priority)
    text = consent_text(actor=compliance_officer)
    intake = api(origination)

    def applicant(seq: int) -> None:
        body = intake_payload(text=text, partners=["PARTNER_A", "PARTNER_B"], seq=seq)
        response = intake.post("/api/v1/applicants/", body, format="json")
        assert response.status_code == 201, response.content

    applicant(1)
    checkpoint = ledger_checkpoint(now=timezone.now() - datetime.timedelta(seconds=600))
    applicant(2)
    return SimpleNamespace(partners=partners, checkpoint=checkpoint)


def attempt(dispatch: Dispatch, *, ago: float, ms: int, outcome: str, number: int = 1) -> DispatchAttempt:
    return DispatchAttempt.objects.create(
        dispatch=dispatch, number=number, started_at=timezone.now() - datetime.timedelta(seconds=ago),
        duration_ms=ms, outcome=outcome, http_status=200 if outcome == "success" else None,
    )  # fmt: skip


def test_spillway_metrics_count_what_the_database_holds(client, world, monkeypatch):
    now = timezone.now()
    probes_a = list(Dispatch.objects.filter(partner__code="PARTNER_A", kind="probe").order_by("id"))
    probes_b = list(Dispatch.objects.filter(partner__code="PARTNER_B", kind="probe").order_by("id"))
    assert (len(probes_a), len(probes_b)) == (2, 2)
    Dispatch.objects.filter(pk=probes_a[0].pk).update(status="in_flight")
    Dispatch.objects.filter(pk=probes_a[1].pk).update(created_at=now - datetime.timedelta(seconds=300))
    Referral.objects.filter(pk=Referral.objects.filter(partner__code="PARTNER_B").first().pk).update(status="probing")
    # The window started a minute ago: the attempt two minutes ago belongs to the previous one.
    monkeypatch.setattr(spillway_metrics, "window_start", lambda _now: now - datetime.timedelta(seconds=60))
    attempt(probes_a[0], ago=120, ms=10, outcome="success")
    attempt(probes_a[0], ago=30, ms=80, outcome="success", number=2)
    attempt(probes_a[1], ago=20, ms=400, outcome="success")
    attempt(probes_a[1], ago=10, ms=3000, outcome="transient", number=2)
    attempt(probes_b[0], ago=10, ms=20, outcome="permanent")
    attempt(probes_b[1], ago=10, ms=0, outcome="deferred")

    page = samples(scrape(client))

    assert value(page, "spillway_metrics_up") == 1
    expected = Counter(Referral.objects.values_list("status", flat=True))
    assert expected == {"queued": 3, "probing": 1}
    for status in Referral.Status.values:
        assert value(page, "spillway_referrals", status=status) == expected.get(status, 0)

    depth = {"partner": "PARTNER_A", "kind": "probe"}
    assert value(page, "spillway_dispatch_queue_depth", **depth, status="in_flight") == 1
    assert value(page, "spillway_dispatch_queue_depth", **depth, status="pending") == 1
    assert value(page, "spillway_dispatch_queue_depth", partner="PARTNER_B", kind="probe", status="pending") == 2
    assert value(page, "spillway_dispatch_queue_depth", partner="PARTNER_B", kind="application", status="pending") == 0
    assert 300 <= value(page, "spillway_dispatch_oldest_pending_seconds", partner="PARTNER_A") < 330
    assert 0 <= value(page, "spillway_dispatch_oldest_pending_seconds", partner="PARTNER_B") < 30

    attempts = "spillway_dispatch_attempts_total"
    assert value(page, attempts, partner="PARTNER_A", outcome="success") == 2  # not the one before the window
    assert value(page, attempts, partner="PARTNER_A", outcome="transient") == 1
    assert value(page, attempts, partner="PARTNER_B", outcome="permanent") == 1
    assert value(page, attempts, partner="PARTNER_B", outcome="deferred") == 1
    assert value(page, attempts, partner="PARTNER_B", outcome="success") == 0

    latency = "spillway_dispatch_latency_seconds"
    a_success = {"partner": "PARTNER_A", "outcome": "success"}
    assert value(page, f"{latency}_bucket", **a_success, le="0.05") == 0
    assert value(page, f"{latency}_bucket", **a_success, le="0.1") == 1
    assert value(page, f"{latency}_bucket", **a_success, le="0.5") == 2
    assert value(page, f"{latency}_bucket", **a_success, le="+Inf") == 2
    assert value(page, f"{latency}_count", **a_success) == 2
    assert value(page, f"{latency}_sum", **a_success) == pytest.approx(0.48)
    a_transient = {"partner": "PARTNER_A", "outcome": "transient"}
    assert value(page, f"{latency}_bucket", **a_transient, le="2.5") == 0
    assert value(page, f"{latency}_bucket", **a_transient, le="5.0") == 1
    assert (f"{latency}_count", frozenset({"partner": "PARTNER_B", "outcome": "deferred"}.items())) not in page

    assert 600 <= value(page, "spillway_ledger_checkpoint_age_seconds") < 630
    second = Consent.objects.exclude(events__id__lte=world.checkpoint.last_event_id).get()
    assert value(page, "spillway_ledger_unsealed_events") == second.events.count() > 0
    assert 0 <= value(page, "spillway_ledger_unsealed_oldest_seconds") < 60

    for reason in spillway_metrics.CALLBACK_REJECTION_REASONS:
        assert ("spillway_callback_rejections_total", frozenset({"reason": reason}.items())) in page


def test_a_checkpoint_covering_everything_leaves_nothing_unsealed(client, world):
    ledger_checkpoint()
    page = samples(scrape(client))
    assert value(page, "spillway_ledger_unsealed_events") == 0
    assert value(page, "spillway_ledger_unsealed_oldest_seconds") == 0
    assert value(page, "spillway_ledger_checkpoint_age_seconds") < 60


def test_without_a_checkpoint_there_is_no_checkpoint_age(client, db):
    page = samples(scrape(client))
    assert not [key for key in page if key[0] == "spillway_ledger_checkpoint_age_seconds"]
    assert value(page, "spillway_referrals", status="queued") == 0


def test_attempt_windows_are_the_quarter_hours_of_the_clock():
    at = datetime.datetime(2026, 11, 28, 12, 44, 59, tzinfo=datetime.timezone(datetime.timedelta(hours=8)))
    assert spillway_metrics.window_start(at) == datetime.datetime(2026, 11, 28, 4, 30, tzinfo=datetime.UTC)
    assert spillway_metrics.window_start(at + datetime.timedelta(seconds=1)).minute == 45


def test_scraping_costs_the_same_few_queries_however_much_there_is(client, world, django_assert_max_num_queries):
    with django_assert_max_num_queries(6):
        scrape(client)
    for code in ("PARTNER_C", "PARTNER_D", "PARTNER_E"):
        PartnerFactory(code=code)
    for dispatch in Dispatch.objects.all():
        attempt(dispatch, ago=1, ms=50, outcome="success")
    with django_assert_max_num_queries(6):
        scrape(client)


def test_a_database_failure_is_reported_not_raised(db, monkeypatch):
    from django.db import DatabaseError

    def broken(self, now):
        raise DatabaseError("connection lost")

    monkeypatch.setattr(spillway_metrics.SpillwayCollector, "_read", broken)
    [up] = list(spillway_metrics.SpillwayCollector().collect())
    assert (up.name, up.samples[0].value) == ("spillway_metrics_up", 0)


def test_the_page_has_request_database_and_cache_metrics(client, db):
    scrape(client)  # one request before, so the request counters exist
    cache.set("spillway:test:zero", 0)
    assert cache.get("spillway:test:zero", "default") == 0  # a falsy value is a hit, not the default
    assert cache.get("spillway:test:absent", "default") == "default"
    text = scrape(client)
    page = samples(text)
    assert value(page, "django_http_requests_total_by_method_total", method="GET") >= 1
    assert "django_http_responses_total_by_status_view_method_total" in text
    assert value(page, "django_db_execute_total", alias="default", vendor=connection.vendor) > 0
    assert "django_db_query_duration_seconds_bucket" in text
    backend = cache.metrics_backend
    assert value(page, "django_cache_get_hits_total", backend=backend) >= 1
    assert value(page, "django_cache_get_misses_total", backend=backend) >= 1


def test_the_database_and_the_cache_are_the_instrumented_backends(settings):
    assert settings.DATABASES["default"]["ENGINE"].startswith("django_prometheus.db.backends.")
    assert settings.CACHES["default"]["BACKEND"] in {"config.metrics.LocMemCache", "config.metrics.RedisCache"}
    assert settings.MIDDLEWARE[0] == "django_prometheus.middleware.PrometheusBeforeMiddleware"
    assert settings.MIDDLEWARE[-1] == "django_prometheus.middleware.PrometheusAfterMiddleware"


def test_in_multiprocess_mode_the_page_sums_the_processes_files_and_keeps_spillway_metrics(
    client, db, tmp_path, monkeypatch
):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = scrape(client)
    assert "spillway_referrals" in text
    # No process wrote files here: the in-memory counters of this one are not on the page.
    assert "django_http_requests_total_by_method" not in text


# --- callback rejections --------------------------------------------------------------------------
def callback(client, code: str, body: bytes, *, secret: str | None = None, timestamp: int | None = None):
    headers = signing.sign(secret or f"secret-{code.lower()}", body, timestamp=timestamp)
    return client.post(
        f"/api/v1/partners/{code}/callbacks/", data=body, content_type="application/json", headers=headers
    )


def rejections(reason: str) -> float:
    return REGISTRY.get_sample_value("spillway_callback_rejections_total", {"reason": reason}) or 0.0


def test_a_callback_with_a_bad_signature_is_counted(client, world):
    body = json.dumps({"event_id": "EV-1", "type": "loan.approved"}).encode()
    before = rejections("bad_signature")
    response = callback(client, "PARTNER_A", body, secret="secret-partner_b")
    assert response.status_code == 401
    assert rejections("bad_signature") == before + 1
    page = samples(scrape(client))
    assert value(page, "spillway_callback_rejections_total", reason="bad_signature") == before + 1


def test_each_kind_of_callback_rejection_has_its_reason(client, world):
    referral = Referral.objects.filter(partner__code="PARTNER_A").first()

    def event(event_id: str, loan_id: str = "L-1", referral_id=referral.pk) -> bytes:
        return json.dumps({
            "event_id": event_id, "type": "loan.approved", "referral_id": str(referral_id),
            "occurred_at": timezone.now().isoformat(), "data": {"loan_id": loan_id},
        }).encode()  # fmt: skip

    cases = [
        ("stale", lambda: callback(client, "PARTNER_A", event("EV-S"), timestamp=int(time.time()) - 3600), 401),
        ("malformed", lambda: callback(client, "PARTNER_A", b"not json"), 400),
        ("malformed", lambda: callback(client, "PARTNER_A", b'{"type": "loan.approved"}'), 400),
        ("unknown_partner", lambda: callback(client, "NO_SUCH_PARTNER", event("EV-P")), 404),
        ("unknown_referral", lambda: callback(client, "PARTNER_A", event("EV-R", referral_id=uuid.uuid4())), 404),
    ]
    for reason, send, status in cases:
        before = rejections(reason)
        assert send().status_code == status, reason
        assert rejections(reason) == before + 1, reason

    assert callback(client, "PARTNER_A", event("EV-C")).status_code == 200
    before = rejections("conflict")
    assert callback(client, "PARTNER_A", event("EV-C", loan_id="L-2")).status_code == 409
    assert rejections("conflict") == before + 1


def test_an_unknown_rejection_reason_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown callback rejection reason"):
        spillway_metrics.callback_rejected("teapot")


# --- request ids ------------------------------------------------------------------------------------
def test_a_sane_request_id_is_echoed(client, db):
    response = client.get("/metrics", headers={"X-Request-ID": "origination-42.a_B-c"})
    assert response["X-Request-ID"] == "origination-42.a_B-c"


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 65, 'quote"d', "新"])
def test_a_missing_or_odd_request_id_is_replaced_by_a_new_one(client, db, given):
    headers = {} if given is None else {"X-Request-ID": given}
    first = client.get("/metrics", headers=headers)["X-Request-ID"]
    second = client.get("/metrics", headers=headers)["X-Request-ID"]
    assert first != given
    assert len(first) == 32
    assert int(first, 16) >= 0
    assert first != second


def test_the_context_is_empty_after_the_response(client, db):
    structlog.contextvars.bind_contextvars(request_id="left-over")
    client.get("/metrics")
    assert structlog.contextvars.get_contextvars() == {}


@pytest.fixture
def json_lines():
    """The project's console handler, writing JSON (LOG_FORMAT=json) to a buffer; the lines, parsed."""
    [handler] = [h for h in logging.getLogger().handlers if any(isinstance(f, logs.MaskingFilter) for f in h.filters)]
    stream = io.StringIO()
    previous_formatter, previous_stream = handler.formatter, handler.setStream(stream)
    handler.setFormatter(logs.formatter(json=True))
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        handler.setFormatter(previous_formatter)
        handler.setStream(previous_stream)


def test_log_lines_of_a_request_carry_its_id_as_json(client, world, json_lines):
    body = json.dumps({"event_id": "EV-1"}).encode()
    response = client.post(
        "/api/v1/partners/PARTNER_A/callbacks/", data=body, content_type="application/json",
        headers={"X-Request-ID": "req-13812345678", **signing.sign("wrong-secret", body)},
    )  # fmt: skip
    assert response.status_code == 401
    lines = json_lines()
    refused = next(line for line in lines if line["event"] == "callback refused")  # structlog, from the view
    django_line = next(line for line in lines if line["logger"] == "django.request")  # logged after the middleware
    for line in (refused, django_line):
        assert line["request_id"] == "req-138****5678"  # the id is masked like everything else
        assert line["level"] == "warning"
        assert line["timestamp"].endswith("Z")
        datetime.datetime.fromisoformat(line["timestamp"])
    assert refused["logger"] == "referrals.api.callbacks"
    assert (refused["partner"], refused["reason"]) == ("PARTNER_A", "wrong")
    assert "Unauthorized" in django_line["event"]


def test_json_lines_mask_personal_data_in_messages_and_tracebacks(json_lines):
    try:
        raise ValueError("bad phone 13812345678")
    except ValueError:
        logging.getLogger("spillway.test").exception("failed for %s", "11010519491231002X")
        structlog.get_logger("spillway.test").exception("failed", phone="13812345678")
    text = json.dumps(json_lines(), ensure_ascii=False)
    assert "13812345678" not in text
    assert "11010519491231002X" not in text
    assert "138****5678" in text


def test_the_console_format_is_for_people():
    record = logging.LogRecord("spillway.test", logging.INFO, __file__, 1, "sent %s", ("13812345678",), None)
    line = logs.formatter(json=False).format(record)
    assert "sent 138****5678" in line
    assert "[spillway.test]" in line
    assert not line.startswith("{")


# --- request ids in Celery tasks -------------------------------------------------------------------
def test_publishing_copies_the_bound_request_id_into_the_message_headers():
    structlog.contextvars.clear_contextvars()
    headers: dict = {}
    requestid._add_request_id_header(headers=headers)
    assert headers == {}
    structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        requestid._add_request_id_header(headers=headers)
    finally:
        structlog.contextvars.clear_contextvars()
    assert headers == {"request_id": "req-1"}


def test_the_worker_binds_the_request_id_for_the_task_and_unbinds_it_after():
    structlog.contextvars.bind_contextvars(request_id="left-over-from-another-task")
    task = SimpleNamespace(name="referrals.dispatch_send", request=SimpleNamespace(request_id="req-2", is_eager=False))
    requestid._bind_task_context(task_id="t-1", task=task)
    assert structlog.contextvars.get_contextvars() == {
        "request_id": "req-2", "task_name": "referrals.dispatch_send", "task_id": "t-1",
    }  # fmt: skip
    requestid._unbind_task_context(task_id="t-1", task=task)
    assert structlog.contextvars.get_contextvars() == {}


def test_a_task_run_eagerly_logs_with_the_callers_request_id_and_gives_it_back(json_lines):
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id="req-3")
    try:
        heartbeat.apply()
        assert structlog.contextvars.get_contextvars() == {"request_id": "req-3"}
    finally:
        structlog.contextvars.clear_contextvars()
    [line] = [line for line in json_lines() if line["event"] == "beat heartbeat"]
    assert (line["request_id"], line["task_name"]) == ("req-3", "config.tasks.heartbeat")
    assert line["task_id"]


def test_a_real_worker_logs_the_publishers_request_id(tmp_path, settings):
    """Through the broker: the header is on the message and the worker's JSON lines carry it."""
    queue = f"spillway-test-{uuid.uuid4().hex[:10]}"
    log = tmp_path / "worker.log"
    env = {**os.environ, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(  # noqa: S603 — our own interpreter and arguments
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-n", f"{queue}@%h", "-Q", queue,
             "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 40
        while " ready." not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        request_id = f"req-{uuid.uuid4().hex[:8]}"
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            result = heartbeat.apply_async(queue=queue)
        finally:
            structlog.contextvars.clear_contextvars()

        def heartbeat_line() -> dict | None:
            for raw in log.read_text().splitlines():
                if raw.startswith("{") and '"beat heartbeat"' in raw:
                    return json.loads(raw)
            return None

        deadline = time.monotonic() + 30
        while (line := heartbeat_line()) is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert line["request_id"] == request_id
        assert (line["task_name"], line["task_id"]) == ("config.tasks.heartbeat", result.id)
        assert (line["level"], line["logger"]) == ("info", "config.tasks")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
