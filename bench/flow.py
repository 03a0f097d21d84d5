"""The end-to-end scenarios of issue 8, on real processes: dispatch and callback ingestion.

Dispatch: the partner simulator (``manage.py simulate_partners``) answers with a fixed latency,
Celery workers (threads pool: each call waits on the partner, so many stay in flight) send the
probes and applications of freshly taken-in applicants, and the figure is referrals per second
until every referral is final. Its baseline is the engine underneath: raw ``requests`` calls to
the same simulator endpoint from as many threads as the workers have calls in flight.

Callbacks: signed events POSTed concurrently to gunicorn, figure in events per second until every
one is ``processed`` by the workers; baseline: the same workers draining a bare no-op task.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import OUT_DIR, ROOT, Result, Scale, at_least, free_port, stop_process, stopwatch, web_server
from bench.profile import children, recording, summarize
from bench.scenarios import _in_threads, _intake_cast, _purge_queue, scenario


@dataclass(frozen=True)
class Flow:
    applicants: int  # taken in per dispatch scenario (three referrals each)
    callbacks: int  # events posted, at most one per existing loan (see _loans): ~590 at smoke scale
    noops: int  # no-op tasks of the callback baseline
    baseline_seconds: float  # how long the raw requests baseline runs


FLOWS = {
    "smoke": Flow(applicants=100, callbacks=600, noops=1_000, baseline_seconds=3),
    "full": Flow(applicants=1_000, callbacks=5_000, noops=10_000, baseline_seconds=10),
}
# Two worker processes (one per core), each with a pool of threads. 48 database connections in all:
# PostgreSQL's default max_connections is 100, and gunicorn needs some in the callback scenario.
# BENCH_WORKER_PROCESSES / BENCH_WORKER_THREADS try another shape.
WORKER_PROCESSES = int(os.environ.get("BENCH_WORKER_PROCESSES", "2"))
WORKER_THREADS = int(os.environ.get("BENCH_WORKER_THREADS", "24"))
NAMED_PARTNERS = 3  # per applicant, spread over the 20 bench partners (each has a 50 requests/s limit)
QUEUE = "celery"
# Untimed warm-up work: the first tasks of a worker process and the first requests of a gunicorn
# worker pay for lazy imports; a thread's first one also for its database connection.
WARM_APPLICANTS = 16
WARM_CALLBACKS = 32


# --- processes --------------------------------------------------------------------------------------
@dataclass
class Workers:
    names: list[str]
    processes: list[subprocess.Popen]
    logs: list

    @property
    def in_flight(self) -> int:
        return WORKER_PROCESSES * WORKER_THREADS

    def check(self) -> None:
        """Raise if a worker died (with the end of its log): a wait would otherwise time out."""
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise RuntimeError(f"a Celery worker exited ({process.returncode}):\n{_tail(log)}")

    def wait_ready(self, timeout: float = 90) -> None:
        from config.celery import app

        deadline = time.monotonic() + timeout
        answered: set[str] = set()
        while time.monotonic() < deadline:
            self.check()
            for reply in app.control.ping(destination=self.names, timeout=0.5) or []:
                answered.update(reply)
            if answered >= set(self.names):
                return
        raise RuntimeError(f"the Celery workers did not answer a ping in {timeout:.0f} s")

    def consume(self, on: bool) -> None:
        """Start or stop taking messages from the queue (the processes stay up and warm)."""
        from config.celery import app

        command = app.control.add_consumer if on else app.control.cancel_consumer
        replies = command(QUEUE, destination=self.names, reply=True, timeout=5) or []
        if len(replies) != len(self.names):
            raise RuntimeError(f"{'add' if on else 'cancel'}_consumer answered by {len(replies)} workers: {replies}")


@contextlib.contextmanager
def celery_workers(env: dict[str, str], **extra: str) -> Iterator[Workers]:
    """Real ``celery worker`` processes on the bench broker and database; call ``wait_ready``.

    They start without waiting so that another process (gunicorn) can start meanwhile; they are
    stopped (and the broker emptied) however the scenario ends."""
    _empty_broker()
    stamp = uuid.uuid4().hex[:6]
    workers = Workers([], [], [])
    environment = {**os.environ, **env, "DJANGO_SETTINGS_MODULE": "config.settings", "PYTHONUNBUFFERED": "1", **extra}
    try:
        for n in range(WORKER_PROCESSES):
            name = f"bench-{stamp}-{n}@%h"
            log = OUT_DIR / f"worker-{n}.log"
            with log.open("w") as out:
                process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                    [sys.executable, "-m", "celery", "-A", "config", "worker", "-n", name, "-Q", QUEUE,
                     "--pool", "threads", "--concurrency", str(WORKER_THREADS), "--loglevel", "WARNING",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            workers.names.append(name.replace("%h", _hostname()))
            workers.processes.append(process)
            workers.logs.append(log)
        yield workers
    finally:
        for process in workers.processes:
            stop_process(process)
        _empty_broker()


def _empty_broker() -> None:
    """Purge the queue, and forget the messages a killed worker held: kombu would put them back an
    hour later, and the no-op baseline waits for "unacked" to be empty. The bench broker is a Redis
    database of the bench's own (``bench_environment``)."""
    import redis
    from django.conf import settings

    _purge_queue()
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        broker.delete("unacked", "unacked_index")
    finally:
        broker.close()


def _hostname() -> str:
    return socket.gethostname()


@contextlib.contextmanager
def partner_simulator(env: dict[str, str], *, latency_ms: int) -> Iterator[str]:
    """``manage.py simulate_partners`` on a free port, the bench partners pointed at it meanwhile.

    The partners' URLs are put back afterwards (the generated data says port 9100)."""
    from partners.models import Partner

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    partners = Partner.objects.filter(code__startswith="BENCH_P")
    original = dict(partners.values_list("pk", "api_base_url"))
    for partner in partners.only("pk", "code"):
        Partner.objects.filter(pk=partner.pk).update(api_base_url=f"{base}/{partner.code.lower()}")
    process = None
    try:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            [sys.executable, "manage.py", "simulate_partners", "--host", "127.0.0.1", "--port", str(port),
             "--latency-ms", str(latency_ms), "--no-callbacks", "--seed", "8"],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_simulator(base, process)
        yield base
    finally:
        if process is not None:
            stop_process(process)
        for pk, url in original.items():
            Partner.objects.filter(pk=pk).update(api_base_url=url)


def _wait_for_simulator(base: str, process: subprocess.Popen, timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the partner simulator exited ({process.returncode}) before answering")
        with contextlib.suppress(requests.RequestException):
            if requests.get(base, timeout=2).ok:
                return
        time.sleep(0.2)
    raise RuntimeError(f"no answer from the partner simulator in {timeout:.0f} s")


def _simulator_requests(base: str) -> int:
    """What the simulator counted so far, this request included."""
    import requests

    return requests.get(base, timeout=10).json()["requests"]


def _tail(path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def cpu_meter(processes: list[subprocess.Popen]) -> Iterator[dict]:
    """Fills a dict with the CPU seconds ``processes`` used meanwhile and how busy the machine was
    (Linux ``/proc``): a figure limited by our own CPU reads differently from one limited by
    whatever else the machine runs."""
    found: dict = {}
    before = _process_cpu(processes), _machine_cpu()
    yield found
    after = _process_cpu(processes), _machine_cpu()
    if None in (*before, *after):
        return
    busy, total = (a - b for a, b in zip(after[1], before[1], strict=True))
    found.update(worker_cpu_s=round(after[0] - before[0], 1), machine_busy=round(busy / total, 2) if total else None)


def _process_cpu(processes: list[subprocess.Popen]) -> float | None:
    try:
        fields = [Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split() for p in processes]
    except OSError:
        return None
    return sum(int(f[11]) + int(f[12]) for f in fields) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine since boot."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def wait_until_settled(model, ids: list, unsettled, *, timeout: float, check: Callable[[], None]) -> None:
    """Poll until no row of ``ids`` matches ``unsettled`` (a Q), querying only the rows still open."""
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(pending)} of {len(ids)} {model._meta.verbose_name_plural} not settled after {timeout:.0f} s"
            )
        check()
        still = []
        for start in range(0, len(pending), 5000):
            chunk = pending[start : start + 5000]
            still.extend(model.objects.filter(unsettled, pk__in=chunk).values_list("pk", flat=True))
        pending = still
        if pending:
            time.sleep(0.1)


# --- dispatch ------------------------------------------------------------------------------------------
def _next_flow_seq() -> int:
    from referrals.models import Applicant

    last = Applicant.objects.filter(external_id__startswith="FLOW-").order_by("-external_id").first()
    return int(last.external_id.split("-")[1]) + 1 if last else 0


def _flow_items(start: int, count: int, text, partners: list[str]) -> list[dict]:
    """Applicants never seen before (a person referred within 30 days is not referred again),
    each naming three partners so that the 20 partners share the calls evenly."""
    from bench.generate import _phone
    from tests.factories import intake_payload, national_id

    items = []
    for n in range(start, start + count):
        named = [partners[(n + 7 * k) % len(partners)] for k in range(NAMED_PARTNERS)]
        body = intake_payload(text=text, partners=named, seq=n)
        body["external_id"] = f"FLOW-{n:09d}"
        body["phone"] = _phone(80_000_000 + n)
        # A region the generator and the other intake scenarios do not use; unique for 9M people.
        birth = datetime.date(1975, 1, 1) + datetime.timedelta(days=(n // 1000) % 9000)
        body["national_id"] = national_id(region="120101", birth=birth, seq=n % 1000)
        items.append(body)
    return items


def take_in(count: int) -> list:
    """Applicants taken in through the intake service (as the API does); returns their referral ids.

    Their probes are enqueued when each batch commits, one message per applicant."""
    from django.contrib.auth.models import User

    from referrals.api.views import _validator
    from referrals.models import Referral
    from referrals.services.intake import MAX_BATCH, applicant_intake

    _token, text, partners = _intake_cast()
    actor = User.objects.get(username="bench-origination")
    items = _flow_items(_next_flow_seq(), count, text, partners)
    applicants = []
    for start in range(0, len(items), MAX_BATCH):
        results = applicant_intake(actor=actor, items=items[start : start + MAX_BATCH], validate=_validator())
        refused = [(r.status, r.errors) for r in results if r.status != 201]
        if refused:
            raise RuntimeError(f"intake refused {len(refused)} applicants: {refused[:2]}")
        applicants.extend(r.applicant.pk for r in results)
    return list(Referral.objects.filter(applicant_id__in=applicants).values_list("pk", flat=True))


def raw_calls_per_second(base: str, *, threads: int, seconds: float) -> float:
    """Signed probes from ``threads`` threads (a session each) to one simulated partner: the most
    the HTTP client and the simulator do at that concurrency, with nothing of Spillway around."""
    import requests

    from partners import signing
    from partners.models import Partner

    partner = Partner.objects.get(code="BENCH_P00")
    url, secret = f"{base}/{partner.code.lower()}/probe", partner.api_secret
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    deadline: list[float] = []

    def caller(index: int) -> None:
        session = requests.Session()
        start.wait()
        while time.perf_counter() < deadline[0]:
            body = json.dumps(
                {"referral_id": str(uuid.uuid4()), "hash_alg": partner.phone_hash, "phone_hash": "0" * 64,
                 "province": "310000", "requested_amount": "50000.00", "requested_term_months": 12},
            ).encode()  # fmt: skip
            headers = {"Content-Type": "application/json; charset=utf-8", **signing.sign(secret, body)}
            answer = session.post(url, data=body, headers=headers, timeout=10)
            if answer.status_code != 200:
                raise RuntimeError(f"the simulator answered {answer.status_code}: {answer.text[:200]}")
            counts[index] += 1

    pool = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    began = time.perf_counter()
    deadline.append(began + seconds)
    start.wait()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def dispatch_end_to_end(scale: Scale, env: dict, *, latency_ms: int, target: float) -> list[Result]:
    """Applicants taken in while the workers hold off, then released at once: referrals per second
    until every one is final (probes answered, the application answered), and the partner calls
    per second that took, against raw calls at the same concurrency."""
    from django.db.models import Q

    from referrals.models import DispatchAttempt, Referral

    flow = FLOWS[scale.name]
    open_ = Q(status__in=Referral.OPEN)
    # The bench times a backlog; the default 30 s probe window would decline what waits longer.
    with (
        partner_simulator(env, latency_ms=latency_ms) as sim,
        celery_workers(env, SPILLWAY_PROBE_WINDOW_SECONDS="3600") as workers,
    ):
        workers.wait_ready()
        warm = take_in(WARM_APPLICANTS)
        wait_until_settled(Referral, warm, open_, timeout=120, check=workers.check)
        workers.consume(False)
        with stopwatch() as intake:
            referrals = take_in(flow.applicants)
        before = _simulator_requests(sim)
        profiled = recording(f"dispatch-{latency_ms}ms", [p.pid for p in workers.processes])
        with stopwatch() as elapsed, cpu_meter(workers.processes) as cpu, profiled as files:
            workers.consume(True)
            wait_until_settled(Referral, referrals, open_, timeout=600, check=workers.check)
        calls = _simulator_requests(sim) - before - 1
        baseline = raw_calls_per_second(sim, threads=workers.in_flight, seconds=flow.baseline_seconds)
    if files:
        print(f"  profile of the workers, dispatch at {latency_ms} ms:\n{summarize(files)}", flush=True)
    rate = len(referrals) / elapsed()
    call_rate = calls / elapsed()
    ratio = call_rate / baseline
    statuses = Counter(Referral.objects.filter(pk__in=referrals).values_list("status", flat=True))
    attempts = Counter(
        DispatchAttempt.objects.filter(dispatch__referral_id__in=referrals).values_list("outcome", flat=True)
    )
    figure_target, ok = at_least(rate, target)
    return [
        Result(
            f"dispatch end to end, {latency_ms} ms partners, {workers.in_flight} calls in flight",
            rate,
            "referrals/s",
            figure_target,
            ok,
            baseline=baseline,
            baseline_unit="calls/s raw requests",
            ratio=ratio,
            ratio_target="≥ 0.5",
            passed_ratio=ratio >= 0.5,
            notes={
                "referrals": len(referrals),
                "seconds": round(elapsed(), 2),
                "partner_calls": calls,
                "partner_calls_per_s": round(call_rate, 1),
                "attempts": dict(attempts),
                "statuses": dict(statuses),
                "intake_seconds": round(intake(), 2),
                **cpu,
            },
        )
    ]


@scenario("dispatch_5ms")
def dispatch_5ms(scale: Scale, env: dict) -> list[Result]:
    return dispatch_end_to_end(scale, env, latency_ms=5, target=150)


@scenario("dispatch_200ms")
def dispatch_200ms(scale: Scale, env: dict) -> list[Result]:
    return dispatch_end_to_end(scale, env, latency_ms=200, target=100)


# --- callbacks -----------------------------------------------------------------------------------------
def _loans(limit: int) -> list[tuple]:
    """``(partner code, referral id, loan id)`` of existing loans, one per referral.

    One event per referral: applying an event also applies the referral's other events still
    received, so events of one referral applied at the same moment by two workers wait on each
    other's row locks — a partner does not send one loan's events all at once, and neither does
    the bench."""
    from referrals.models import Loan

    rows = (
        Loan.objects.filter(partner__code__startswith="BENCH_P")
        .order_by("referral_id", "pk")
        .distinct("referral_id")
        .values_list("partner__code", "referral_id", "loan_id")[:limit]
    )
    return list(rows)


def signed_events(loans: list[tuple], prefix: str) -> list[tuple[str, bytes, dict]]:
    """``(partner code, body, headers)``: a ``loan.approved`` for each loan, later than its approval,
    so applying it is processed and changes nothing (the generated loans and settlements stay as
    they were); event ids start with ``prefix``, new in each run."""
    from partners import signing
    from partners.models import Partner

    secrets = {p.code: p.api_secret for p in Partner.objects.filter(code__startswith="BENCH_P")}
    now = datetime.datetime.now(datetime.UTC).isoformat()
    events = []
    for n, (code, referral_id, loan_id) in enumerate(loans):
        body = json.dumps(
            {"event_id": f"{prefix}{n}", "type": "loan.approved", "referral_id": str(referral_id),
             "occurred_at": now, "data": {"loan_id": loan_id}},
            separators=(",", ":"),
        ).encode()  # fmt: skip
        headers = {"Content-Type": "application/json", **signing.sign(secrets[code], body)}
        events.append((code, body, headers))
    return events


def noop_tasks_per_second(count: int, *, check: Callable[[], None]) -> float:
    """``.delay()`` of a trivial task ``count`` times from here, until the workers drained them all."""
    import redis
    from django.conf import settings

    from config.tasks import heartbeat

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        with stopwatch() as elapsed:
            for _ in range(count):
                heartbeat.delay()
            empty_twice, deadline = 0, time.monotonic() + 300
            while empty_twice < 2:  # a message moves from the queue to "unacked" in two steps
                check()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{broker.llen(QUEUE)} no-op tasks still queued after 300 s")
                empty = broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0
                empty_twice = empty_twice + 1 if empty else 0
                time.sleep(0.005)
    finally:
        broker.close()
    return count / elapsed()


@scenario("callbacks")
def callbacks(scale: Scale, env: dict) -> list[Result]:
    """Signed callbacks POSTed by 16 concurrent clients to gunicorn, until every one is processed;
    baseline: the same workers draining a no-op task."""
    import requests
    from django.utils import timezone

    from referrals.models import CallbackEvent

    flow = FLOWS[scale.name]
    prefix = f"BENCH-{uuid.uuid4().hex[:10]}-"
    events = signed_events(_loans(flow.callbacks), prefix)
    ours = CallbackEvent.objects.filter(event_id__startswith=prefix)
    answers: Counter = Counter()
    lock, local = threading.Lock(), threading.local()
    with celery_workers(env) as workers, web_server(env) as base:
        workers.wait_ready()
        noop_rate = noop_tasks_per_second(flow.noops, check=workers.check)

        def post(event) -> None:
            code, body, headers = event
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            answer = session.post(f"{base}/api/v1/partners/{code}/callbacks/", data=body, headers=headers, timeout=60)
            with lock:
                answers[answer.json().get("status") if answer.status_code == 200 else answer.status_code] += 1

        def settle(since) -> None:
            # Every event is stored once answered: wait for the last one still received (the
            # index on status and received_at finds them).
            waiting = ours.filter(status=CallbackEvent.Status.RECEIVED, received_at__gte=since)
            deadline = time.monotonic() + 600
            while waiting.exists():
                workers.check()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{waiting.count()} callbacks still received after 600 s")
                time.sleep(0.05)

        warm, events = events[:WARM_CALLBACKS], events[WARM_CALLBACKS:]
        since = timezone.now()
        _in_threads(post, warm, threads=16)
        settle(since)
        since = timezone.now()
        pids = [p.pid for p in workers.processes] + children("gunicorn")
        with stopwatch() as elapsed, cpu_meter(workers.processes) as cpu, recording("callbacks", pids) as files:
            _in_threads(post, events, threads=16)
            settle(since)
        if files:
            print(f"  profile of gunicorn and the workers, callbacks:\n{summarize(files)}", flush=True)
    if answers != Counter({"accepted": len(warm) + len(events)}):
        raise RuntimeError(f"the callbacks were answered {dict(answers)}")
    outcome = Counter(ours.values_list("status", flat=True))
    if outcome != Counter({CallbackEvent.Status.PROCESSED: len(warm) + len(events)}):
        raise RuntimeError(f"the callbacks ended {dict(outcome)}")
    rate = len(events) / elapsed()
    ratio = rate / noop_rate
    target, ok = at_least(rate, 500)
    return [
        Result(
            f"callback ingestion, accepted and processed, {len(events):,} events",
            rate,
            "events/s",
            target,
            ok,
            baseline=noop_rate,
            baseline_unit="no-op tasks/s",
            ratio=ratio,
            ratio_target="≥ 0.4",
            passed_ratio=ratio >= 0.4,
            notes={"seconds": round(elapsed(), 2), "noops": flow.noops, "worker_threads": workers.in_flight, **cpu},
        )
    ]
