"""The performance scenarios of issue 8, each with its baseline measured in the same run.

Each function takes the :class:`~bench.harness.Scale` (and the bench environment where it starts
processes) and returns one or more :class:`~bench.harness.Result` rows. They run after
``bench.generate`` has filled the database to the scale's size.
"""

from __future__ import annotations

import datetime
import json
import random
import subprocess
import sys
import threading
import time
from decimal import Decimal

from bench.harness import ROOT, Result, Scale, at_least, at_most, p95, stopwatch, web_server

REGISTRY: dict[str, object] = {}


def scenario(name: str):
    def register(fn):
        REGISTRY[name] = fn
        return fn

    return register


def _signed_in_client(role: str):
    """An in-process client signed in with both factors as a user of ``role``."""
    from django.contrib.auth.models import Group, User

    from tests.signin import TwoFactorClient

    user, _ = User.objects.get_or_create(username=f"bench-{role}", defaults={"is_staff": True})
    user.groups.add(Group.objects.get(name=role))
    client = TwoFactorClient()
    client.force_login(user)
    return client


def _timed_get(client, url: str, repeats: int) -> list[float]:
    client.get(url)  # warm: the first request pays for imports and the database's cold pages
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
    return samples


# --- verify_ledger ---------------------------------------------------------------------------------
@scenario("verify_ledger")
def verify_ledger(scale: Scale, env: dict) -> list[Result]:
    """``verify_ledger`` over the whole ledger, per million events; baseline: the bare canonical
    JSON + SHA-256 loop over the same rows already in memory (a sample of up to 200,000)."""
    from referrals import merkle
    from referrals.models import ConsentEvent
    from referrals.services.ledger import ledger_verify

    with stopwatch() as elapsed:
        report = ledger_verify()
    if not report.ok:
        raise RuntimeError(f"the generated ledger does not verify: {report.problems[:3]}")
    events = report.events
    per_million = elapsed() * 1_000_000 / events

    rows = list(
        ConsentEvent.objects.order_by("id").values_list(
            "consent_id", "seq", "type", "occurred_at", "payload", "prev_hash"
        )[:200_000]
    )
    with stopwatch() as bare:
        for consent_id, seq, type_, occurred_at, payload, prev_hash in rows:
            merkle.event_hash(
                merkle.event_document(
                    consent_id=consent_id, seq=seq, type=type_, occurred_at=occurred_at, payload=payload,
                    prev_hash=prev_hash,
                )
            )  # fmt: skip
    bare_rate = len(rows) / bare()
    rate = events / elapsed()
    ratio = rate / bare_rate
    target, ok = at_most(per_million, 30)
    return [
        Result(
            "verify_ledger (s per 1M events)",
            per_million,
            "s",
            target,
            ok,
            baseline=bare_rate,
            baseline_unit="events/s bare hash",
            ratio=ratio,
            ratio_target="≥ 0.2",
            passed_ratio=ratio >= 0.2,
            notes={"events": events, "seconds": round(elapsed(), 2), "rate": round(rate)},
        )
    ]


# --- compliance search ----------------------------------------------------------------------------
@scenario("compliance_search")
def compliance_search(scale: Scale, env: dict) -> list[Result]:
    """The applicants screen searched by a phone number typed in clear (blind index), p95."""
    from bench.generate import _phone
    from referrals.models import Applicant

    total = Applicant.objects.count()
    client = _signed_in_client("compliance_officer")
    rng = random.Random(7)  # noqa: S311 - which rows to look up
    samples = []
    for _ in range(scale.timed_repeats * 2):
        phone = _phone(rng.randrange(0, min(total, scale.applicants)))
        samples.extend(_timed_get(client, f"/admin/referrals/applicant/?q={phone}", 1))
    figure = p95(samples)
    target, ok = at_most(figure, 50)
    return [Result("compliance search by phone (p95)", figure, "ms", target, ok, notes={"applicants": total})]


# --- admin changelists at depth ---------------------------------------------------------------------
CHANGELISTS = (
    ("referrals", "/admin/referrals/referral/", "referrals_referral"),
    ("ledger", "/admin/referrals/consentevent/", "referrals_consentevent"),
    ("applicants", "/admin/referrals/applicant/", "referrals_applicant"),
)


@scenario("admin_changelists")
def admin_changelists(scale: Scale, env: dict) -> list[Result]:
    """First page and a deep page of the biggest changelists, p95; baseline: the page's main
    SELECT alone (captured from the page, run bare)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = _signed_in_client("auditor")
    results = []
    for label, url, table in CHANGELISTS:
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [table])
            rows = cursor.fetchone()[0]
        pages = max(1, rows // 100)
        deep = min(scale.page_deep, pages)
        timings = {}
        for page_label, page_url in (("first page", url), (f"page {deep:,}", f"{url}?p={deep}")):
            samples = _timed_get(client, page_url, scale.timed_repeats)
            with CaptureQueriesContext(connection) as captured:
                client.get(page_url)
            main = max(
                (q["sql"] for q in captured.captured_queries if f'FROM "{table}"' in q["sql"] and "LIMIT" in q["sql"]),
                key=len,
                default=None,
            )
            bare = _bare_select_ms(main, scale.timed_repeats) if main else None
            figure = p95(samples)
            timings[page_label] = figure
            target, ok = at_most(figure, 300)
            results.append(
                Result(
                    f"changelist {label} ({rows:,} rows), {page_label} (p95)",
                    figure,
                    "ms",
                    target,
                    ok,
                    baseline=bare,
                    baseline_unit="ms main SELECT",
                    ratio=(figure / bare) if bare else None,
                    ratio_target="(page ÷ SELECT)",
                )
            )
        first, deep_figure = timings["first page"], timings[f"page {deep:,}"]
        results.append(
            Result(
                f"changelist {label}: page {deep:,} ÷ first page",
                deep_figure / first,
                "×",
                "≤ 1.5",
                deep_figure / first <= 1.5,
            )
        )
    return results


def _bare_select_ms(sql: str, repeats: int) -> float:
    from django.db import connection

    samples = []
    with connection.cursor() as cursor:
        for _ in range(repeats + 1):
            started = time.perf_counter()
            cursor.execute(sql)
            cursor.fetchall()
            samples.append((time.perf_counter() - started) * 1000)
    return p95(samples[1:])


# --- settlement run ---------------------------------------------------------------------------------
@scenario("settlement_run")
def settlement_run(scale: Scale, env: dict) -> list[Result]:
    """Settlement runs over every month with repayments, 20 partners, in a process of their own
    (its peak memory is the run's); baseline: one SQL SUM over the same repayment events."""
    from django.db import connection

    from referrals.models import Repayment

    months = sorted({d.strftime("%Y-%m") for d in Repayment.objects.dates("paid_date", "month")})
    now_month = datetime.date.today().strftime("%Y-%m")
    months = [m for m in months if m < now_month] or months
    events = Repayment.objects.filter(paid_date__lt=_month_after(months[-1])).count()
    child = subprocess.run(  # noqa: S603 - our own command line
        [sys.executable, "-m", "bench.settle", *months], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if child.returncode != 0:
        raise RuntimeError(f"bench.settle failed:\n{child.stderr[-2000:]}")
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    samples = []
    with connection.cursor() as cursor:
        for _ in range(3):
            started = time.perf_counter()
            cursor.execute(
                "SELECT SUM(interest) FROM referrals_repayment WHERE paid_date < %s", [_month_after(months[-1])]
            )
            cursor.fetchone()
            samples.append(time.perf_counter() - started)
    bare = min(samples)
    target, ok = at_most(measured["seconds"], 60)
    memory_ok = measured["peak_mb"] <= 1024
    return [
        Result(
            f"settlement runs, {len(months)} months, {events:,} repayment events",
            measured["seconds"],
            "s",
            target,
            ok,
            baseline=bare,
            baseline_unit="s one SQL SUM",
            ratio=measured["seconds"] / bare,
            ratio_target="(run ÷ SUM)",
            notes={"months": months, "lines": measured["lines"]},
        ),
        Result("settlement runs: peak memory", measured["peak_mb"], "MB", "≤ 1024", memory_ok),
    ]


def _month_after(month: str) -> datetime.date:
    year, mon = map(int, month.split("-"))
    return datetime.date(year + mon // 12, mon % 12 + 1, 1)


# --- intake through the API ---------------------------------------------------------------------------
def _intake_items(start: int, count: int, text, partners: list[str]) -> list[dict]:
    from bench.generate import _phone
    from tests.factories import intake_payload, national_id

    items = []
    for n in range(start, start + count):
        body = intake_payload(text=text, partners=partners, seq=n)
        body["external_id"] = f"INTAKE-{n:09d}"
        body["phone"] = _phone(50_000_000 + n)
        body["national_id"] = national_id(region="310101", birth=datetime.date(1985, 3, 1 + n % 28), seq=n)
        items.append(body)
    return items


def _intake_cast():
    from django.contrib.auth.models import Group, User
    from rest_framework.authtoken.models import Token

    from partners.models import Partner
    from referrals.models import ConsentText

    user, _ = User.objects.get_or_create(username="bench-origination")
    user.groups.add(Group.objects.get(name="origination"))
    token, _ = Token.objects.get_or_create(user=user)
    text = ConsentText.objects.get(code="bench-consent-v1")
    partners = list(Partner.objects.filter(code__startswith="BENCH_P").order_by("code").values_list("code", flat=True))
    return token.key, text, partners


def _next_intake_seq() -> int:
    from referrals.models import Applicant

    last = Applicant.objects.filter(external_id__startswith="INTAKE-").order_by("-external_id").first()
    return int(last.external_id.split("-")[1]) + 1 if last else 0


INTAKE_TABLES = (
    "referrals_applicant", "referrals_consent", "referrals_consentrecipient", "referrals_consentevent",
    "referrals_referral", "referrals_routingdecision", "referrals_dispatch",
)  # fmt: skip


def _rows_in(tables) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        total = 0
        for table in tables:
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - our own names
            total += cursor.fetchone()[0]
    return total


@scenario("batch_intake")
def batch_intake(scale: Scale, env: dict) -> list[Result]:
    """``POST /api/v1/applicants/batch/`` (1,000 per call, two clients) through gunicorn; baseline:
    bare ``bulk_create`` of the same applicants, consents, named partners and ledger events."""
    import requests

    token, text, partners = _intake_cast()
    start = _next_intake_seq()
    items = _intake_items(start, scale.intake_items, text, partners[:3])
    batches = [items[i : i + 1000] for i in range(0, len(items), 1000)]
    before = _rows_in(INTAKE_TABLES)
    with web_server(env) as base:
        session_headers = {"Authorization": f"Token {token}"}
        errors: list[str] = []

        def post(chunk):
            answer = requests.post(
                f"{base}/api/v1/applicants/batch/", json={"items": chunk}, headers=session_headers, timeout=600
            )
            statuses = {r["status"] for r in answer.json()["results"]} if answer.ok else {answer.status_code}
            if statuses != {201}:
                errors.append(f"{answer.status_code} {statuses}")

        with stopwatch() as elapsed:
            _in_threads(post, batches, threads=2)
    _purge_queue()  # the probes intake enqueued: no worker runs in this scenario
    if errors:
        raise RuntimeError(f"batch intake answered {errors[:3]}")
    written = _rows_in(INTAKE_TABLES) - before
    rate = len(items) / elapsed()
    rows_rate = written / elapsed()
    bare_rows_rate = _bare_bulk_create(len(items), text, partners[:3])
    ratio = rows_rate / bare_rows_rate
    target, ok = at_least(rate, 500)
    return [
        Result(
            "batch intake through the API",
            rate,
            "applicants/s",
            target,
            ok,
            baseline=bare_rows_rate,
            baseline_unit="rows/s bare bulk_create",
            ratio=ratio,
            ratio_target="≥ 0.25",
            passed_ratio=ratio >= 0.25,
            notes={"applicants": len(items), "rows": written, "rows_per_s": round(rows_rate)},
        )
    ]


def _bare_bulk_create(count: int, text, partners: list[str]) -> float:
    """Rows per second of plain ``bulk_create`` (fields encrypted by their own field class, as in
    intake) into applicants, consents, named partners and ledger events: no validation, no routing."""
    from django.contrib.auth.models import User
    from django.db import transaction

    from config.crypto import blind_index
    from partners.models import Partner
    from referrals import merkle
    from referrals.models import Applicant, Consent, ConsentEvent, ConsentRecipient
    from referrals.services.ledger import build_event

    actor = User.objects.get(username="bench-origination")
    rows = list(Partner.objects.filter(code__in=partners))
    now = datetime.datetime.now(datetime.UTC)
    start = Applicant.objects.filter(external_id__startswith="BULK-").count()
    applicants, consents, recipients, events = [], [], [], []
    for n in range(start, start + count):
        phone = f"19{n:09d}"
        a = Applicant(
            external_id=f"BULK-{n:09d}", name="王芳", national_id="11010519491231002X", phone=phone,
            national_id_index=blind_index("11010519491231002X", purpose="national_id"),
            phone_index=blind_index(phone, purpose="phone"), birth_date=datetime.date(1949, 12, 31),
            province="310000", city="310100", requested_amount=Decimal("50000.00"), requested_term_months=12,
            decline_reasons=["FUNDING_COST"], declined_at=now, request_sha256="0" * 64, created_by=actor,
        )  # fmt: skip
        c = Consent(
            applicant=a, text=text, text_sha256=text.sha256, data_categories=["identity"], purposes=["loan_referral"],
            channel="app", granted_at=now, ip="10.0.0.1", evidence_sha256="0" * 64, expires_at=now,
        )  # fmt: skip
        applicants.append(a)
        consents.append(c)
        recipients.extend(
            ConsentRecipient(consent=c, partner=p, disclosed_name=p.name, disclosed_contact_email=p.contact_email,
                             disclosed_contact_phone=p.contact_phone)
            for p in rows
        )  # fmt: skip
        # A valid chain start (hashed here, outside the timing): the bench ledger must keep verifying.
        events.append(build_event(consent_id=c.pk, seq=1, type="granted", occurred_at=now, payload={},
                                  prev_hash=merkle.GENESIS_HASH))  # fmt: skip
    with stopwatch() as elapsed, transaction.atomic():
        Applicant.objects.bulk_create(applicants, batch_size=1000)
        Consent.objects.bulk_create(consents, batch_size=1000)
        ConsentRecipient.objects.bulk_create(recipients, batch_size=1000)
        ConsentEvent.objects.bulk_create(events, batch_size=1000)
    return (len(applicants) + len(consents) + len(recipients) + len(events)) / elapsed()


def _in_threads(fn, work: list, *, threads: int) -> None:
    queue = list(reversed(work))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def loop():
        while True:
            with lock:
                if not queue:
                    return
                item = queue.pop()
            try:
                fn(item)
            except BaseException as exc:
                failures.append(exc)
                return

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise failures[0]


@scenario("single_intake")
def single_intake(scale: Scale, env: dict) -> list[Result]:
    """``POST /api/v1/applicants/`` from many concurrent clients (each its own connection), p95."""
    import requests

    token, text, partners = _intake_cast()
    start = _next_intake_seq()
    clients, per_client = scale.concurrent_clients, scale.concurrent_requests
    items = _intake_items(start, clients * per_client, text, partners[3:6])
    latencies: list[float] = []
    errors: list[int] = []
    with web_server(env) as base:

        def client(index: int):
            session = requests.Session()
            session.headers["Authorization"] = f"Token {token}"
            for item in items[index * per_client : (index + 1) * per_client]:
                started = time.perf_counter()
                answer = session.post(f"{base}/api/v1/applicants/", json=item, timeout=60)
                latencies.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 201:
                    errors.append(answer.status_code)

        with stopwatch() as elapsed:
            _in_threads(client, list(range(clients)), threads=clients)
    _purge_queue()
    if errors:
        raise RuntimeError(f"single intake answered {sorted(set(errors))}")
    figure = p95(latencies)
    target, ok = at_most(figure, 100)
    return [
        Result(
            f"single intake, {clients} concurrent clients (p95)",
            figure,
            "ms",
            target,
            ok,
            notes={"requests": len(latencies), "per_second": round(len(latencies) / elapsed())},
        )
    ]


# --- the outbox sweeper -----------------------------------------------------------------------------------
@scenario("sweeper")
def sweeper(scale: Scale, env: dict) -> list[Result]:
    """Stuck dispatches (in flight, lease expired — a worker died holding them) until every one is
    pending and enqueued again, sweeping as beat does (every ``SPILLWAY_SWEEP_SECONDS``)."""
    from django.conf import settings
    from django.utils import timezone

    from referrals.models import Dispatch, Referral
    from referrals.services.dispatch import dispatch_sweep

    now = timezone.now()
    referrals = list(
        Referral.objects.filter(status="queued").values_list("pk", "consent_id", "partner_id")[: scale.sweeper_stuck]
    )
    stamp = int(time.time())
    stuck = [
        Dispatch(
            kind="probe",
            partner_id=partner,
            consent_id=consent,
            referral_id=pk,
            idempotency_key=f"bench-sweep-{stamp}-{n}",
            status="in_flight",
            attempts=1,
            next_attempt_at=now - datetime.timedelta(minutes=10),
            enqueued_at=now - datetime.timedelta(minutes=10),
            lease_expires_at=now - datetime.timedelta(minutes=5),
        )
        for n, (pk, consent, partner) in enumerate(referrals * (scale.sweeper_stuck // max(1, len(referrals)) + 1))
    ][: scale.sweeper_stuck]
    Dispatch.objects.bulk_create(stuck, batch_size=2000)
    ids = [d.pk for d in Dispatch.objects.filter(idempotency_key__startswith=f"bench-sweep-{stamp}-").only("pk")]
    interval = settings.CELERY_BEAT_SCHEDULE["dispatch-sweep"]["schedule"]
    sweeps, busy = 0, 0.0
    with stopwatch() as elapsed:
        while (
            Dispatch.objects.filter(pk__in=ids, enqueued_at__lt=now).exists()
            or Dispatch.objects.filter(pk__in=ids, enqueued_at__isnull=True).exists()
        ):
            sweeps += 1
            started = time.perf_counter()
            dispatch_sweep()
            busy += time.perf_counter() - started
            if sweeps > 1000:
                raise RuntimeError("the sweeper does not converge")
    # Under beat the sweeps are `interval` apart: the last one starts (sweeps - 1) intervals in.
    with_beat = (sweeps - 1) * interval + busy / sweeps
    Dispatch.objects.filter(pk__in=ids).update(status="cancelled", last_error="bench sweeper scenario")
    _purge_queue()
    target, ok = at_most(with_beat, 60)
    return [
        Result(
            f"sweeper, {len(ids):,} stuck dispatches re-enqueued",
            with_beat,
            "s",
            target,
            ok,
            notes={
                "sweeps": sweeps,
                "sweep_seconds_total": round(busy, 2),
                "beat_interval": interval,
                "back_to_back_seconds": round(elapsed(), 2),
            },
        )
    ]


def _purge_queue() -> None:
    from config.celery import app

    app.control.purge()


import bench.flow  # noqa: E402, F401 - registers the end-to-end scenarios (they import this module)
