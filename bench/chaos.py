"""``make chaos``: applicants arrive while the harness breaks things, then the promises are checked.

    python -m bench.chaos                   # issue 8's scenario: 10,000 applicants over 15 minutes
    python -m bench.chaos --plan smoke      # the same faults, smaller and faster (a try-out)

Everything runs as real processes on loopback: a PostgreSQL cluster and a Redis server of the
harness's own (so that restarting them disturbs nothing else on the machine), gunicorn, Celery
workers (threads pools) and one beat, and the partner simulator with 20 partners answering with
faults (timeouts — half after accepting —, 5xx, 429, one partner down for five minutes) and calling
back with every event delivered 1–3 times out of order, plus stale and badly signed copies.

While the applicants arrive through ``POST /api/v1/applicants/batch/``, the harness ``kill -9``s
worker processes (a supervisor starts a new one), restarts Redis (the last time after ``FLUSHALL``),
restarts PostgreSQL once (``pg_ctl restart -m fast``: every connection is cut), and withdraws 500
consents through ``POST /api/v1/consents/{id}/withdraw/`` a moment after their referrals were
queued. Then it waits — at most ten minutes after the last fault — until every referral is final
or explicitly waiting and every callback is answered and applied, and checks the invariants
(``bench/chaos_checks.py``) against the simulator's own records: lost, duplicate applications,
unconsented sends, bad callbacks accepted, the in-order replay, the settlement against a
recomputation, the ledger. It prints the faults done and each invariant's count, writes JSON to
``var/bench/``, and exits 1 if an invariant does not hold (2 if the run itself failed).

``CHAOS_DATABASE_URL`` + ``CHAOS_PG_RESTART`` (a shell command) use an existing PostgreSQL instead
of the harness's own cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import heapq
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.harness import (
    OUT_DIR,
    ROOT,
    bench_environment,
    ensure_database,
    free_port,
    setup_django,
    stop_process,
    web_server,
)

CHAOS_DIR = OUT_DIR / "chaos"


@dataclass(frozen=True)
class Plan:
    applicants: int
    seconds: float  # the fault phase: the applicants arrive and the faults happen within it
    kills: int  # kill -9 of worker processes
    redis_restarts: int  # the last one after FLUSHALL
    pg_restarts: int
    withdrawals: int
    down_seconds: float  # one partner answers 503 for this long
    month_seconds: float  # a loan month in the simulator's callbacks
    settle_seconds: float = 600  # after the last fault, for every referral to be final or waiting


PLANS = {
    "full": Plan(applicants=10_000, seconds=900, kills=36, redis_restarts=3, pg_restarts=1, withdrawals=500,
                 down_seconds=300, month_seconds=4),
    "smoke": Plan(applicants=600, seconds=90, kills=8, redis_restarts=3, pg_restarts=1, withdrawals=40,
                  down_seconds=30, month_seconds=2),
}  # fmt: skip
WORKER_PROCESSES = 3
WORKER_THREADS = 8
BATCH = 25
PARTNERS = 20
DOWN_PARTNER = "BENCH_P07"
SIMULATOR_FAULTS = [
    "--timeout-rate", "0.05", "--timeout-after-accept-rate", "0.5", "--timeout-hold-ms", "12000",
    "--error-rate", "0.10", "--throttle-rate", "0.05",
    "--callback-duplicates", "3", "--callback-reorder", "8",
    "--callback-stale-rate", "0.05", "--callback-bad-signature-rate", "0.05", "--callback-retries", "8",
]  # fmt: skip


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} {message}", flush=True)


# --- the services the harness owns and breaks --------------------------------------------------------
class OwnPostgres:
    """A throwaway PostgreSQL cluster (``initdb``) on a free port, restartable at will."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="spillway-chaos-pg-"))
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/spillway_chaos"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"), "-o", options, "-w",
                  "start")  # fmt: skip

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "restart")

    def stop(self, *, keep: bool = False) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        if keep:
            start = f"runuser -u postgres -- {self.bin / 'pg_ctl'} -D {self.dir / 'data'} -o '-p {self.port}' start"
            print(f"kept: the chaos database's cluster in {self.dir / 'data'}; start it with\n  {start}\n"
                  f"  then: psql -h 127.0.0.1 -p {self.port} -U postgres spillway_chaos")  # fmt: skip
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class ExternalPostgres:
    """``CHAOS_DATABASE_URL``, restarted with the shell command ``CHAOS_PG_RESTART``."""

    def __init__(self, url: str, restart_command: str) -> None:
        self.url, self.command = url, restart_command

    def start(self) -> None:
        pass

    def restart(self) -> None:
        subprocess.run(self.command, shell=True, check=True)  # noqa: S602 - the operator's own command

    def stop(self, *, keep: bool = False) -> None:
        pass


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    if shutil.which("pg_ctl"):
        return Path(shutil.which("pg_ctl")).parent
    raise SystemExit("make chaos needs PostgreSQL's pg_ctl and initdb (or CHAOS_DATABASE_URL + CHAOS_PG_RESTART)")


class OwnRedis:
    """``redis-server`` on a free port, without persistence: a restart loses what was queued."""

    def __init__(self) -> None:
        self.server, self.client = shutil.which("redis-server"), shutil.which("redis-cli")
        if not (self.server and self.client):
            raise SystemExit("make chaos needs redis-server and redis-cli")
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603
            [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            if self.cli("ping") == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def cli(self, *args: str) -> str:
        done = subprocess.run([self.client, "-p", str(self.port), *args], capture_output=True, text=True)  # noqa: S603
        return done.stdout.strip()

    def restart(self, *, flush: bool = False) -> None:
        if flush:
            self.cli("FLUSHALL")
        self.stop()
        time.sleep(2)  # the clients see it gone
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class Workers:
    """``WORKER_PROCESSES`` Celery workers kept alive: one killed is replaced a second later."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.processes: list[subprocess.Popen | None] = [None] * WORKER_PROCESSES
        self.started = 0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True)

    def _spawn(self, slot: int) -> subprocess.Popen:
        self.started += 1
        out = (CHAOS_DIR / f"worker-{slot}.log").open("a")
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-n", f"chaos-{slot}-{self.started}@%h",
             "--pool", "threads", "--concurrency", str(WORKER_THREADS), "--loglevel", "WARNING",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def start(self) -> None:
        for slot in range(WORKER_PROCESSES):
            self.processes[slot] = self._spawn(slot)
        self.thread.start()

    def _supervise(self) -> None:
        while not self.stop_event.wait(1.0):
            with self.lock:
                for slot, process in enumerate(self.processes):
                    if process is not None and process.poll() is not None:
                        self.processes[slot] = self._spawn(slot)

    def kill_one(self, rng: random.Random) -> int | None:
        with self.lock:
            alive = [p for p in self.processes if p is not None and p.poll() is None]
            if not alive:
                return None
            victim = rng.choice(alive)
            os.kill(victim.pid, signal.SIGKILL)
            return victim.pid

    def stop(self) -> None:
        self.stop_event.set()
        with self.lock:
            for process in self.processes:
                if process is not None:
                    stop_process(process)


def _spawn_logged(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    out = (CHAOS_DIR / f"{name}.log").open("w")
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603


# --- the load ---------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the harness did, printed with the invariants."""

    kills: int = 0
    redis_restarts: int = 0
    redis_flushes: int = 0
    pg_restarts: int = 0
    applicants: int = 0
    intake_retries: int = 0
    withdrawals: int = 0
    withdrawal_retries: int = 0
    faults: list[str] = field(default_factory=list)
    last_fault_at: float = 0.0


def _api_session(base: str, token: str):
    import requests

    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})
    session.base = base  # type: ignore[attr-defined]
    return session


def _post_until_answered(session, path: str, body: dict, *, ok: tuple[int, ...], tally: Tally, counter: str, deadline):
    """POST until the API answers one of ``ok`` (a restart in progress answers 5xx or nothing)."""
    import requests

    while True:
        try:
            answer = session.post(session.base + path, data=json.dumps(body), timeout=60)
            if answer.status_code in ok:
                return answer
            if answer.status_code < 500 and answer.status_code != 429:
                raise RuntimeError(f"POST {path} answered {answer.status_code}: {answer.text[:300]}")
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"POST {path} found no answer before the deadline")
        setattr(tally, counter, getattr(tally, counter) + 1)
        time.sleep(1.0)


def _db_retry(fn, *, deadline: float):
    """Run ``fn`` (harness-side reads), again after a dropped connection (PostgreSQL restarts)."""
    from django.db import OperationalError, close_old_connections, connection

    while True:
        try:
            return fn()
        except OperationalError:
            connection.close()
            close_old_connections()
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


class Withdrawals:
    """Consents withdrawn a moment after their applicant's referrals were queued; each return time
    (when the API said "withdrawn") is what ``unconsented sends`` is judged against."""

    def __init__(self, session, tally: Tally, deadline: float) -> None:
        self.session, self.tally, self.deadline = session, tally, deadline
        self.due: list[tuple[float, str]] = []
        self.returned: dict[str, float] = {}
        self.scheduled = 0
        self.condition = threading.Condition()
        self.closed = False
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, name=f"withdraw-{n}", daemon=True) for n in range(4)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def schedule(self, consent_id: str, at: float) -> None:
        with self.condition:
            heapq.heappush(self.due, (at, consent_id))
            self.scheduled += 1
            self.condition.notify()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify_all()
        for thread in self.threads:
            thread.join()

    def _next(self) -> str | None:
        with self.condition:
            while True:
                if self.due and self.due[0][0] <= time.monotonic():
                    return heapq.heappop(self.due)[1]
                if self.closed and not self.due:
                    return None
                self.condition.wait(timeout=0.05)

    def _run(self) -> None:
        while (consent_id := self._next()) is not None:
            body = {"withdrawn_at": datetime.datetime.now(datetime.UTC).isoformat(), "channel": "app",
                    "reason": "chaos: the applicant changed their mind"}  # fmt: skip
            try:
                _post_until_answered(
                    self.session, f"/api/v1/consents/{consent_id}/withdraw/", body, ok=(200, 409),
                    tally=self.tally, counter="withdrawal_retries", deadline=self.deadline,
                )  # fmt: skip
            except Exception as exc:
                self.errors.append(f"{consent_id}: {exc}")
                continue
            self.returned[consent_id] = time.time()  # the caller is told now (a 409: an earlier try did it)
            self.tally.withdrawals += 1


def _items(start: int, count: int, text, partners: list[str]) -> list[dict]:
    from bench.flow import _flow_items

    items = _flow_items(start, count, text, partners)
    for n, item in enumerate(items, start):
        item["external_id"] = f"CHAOS-{n:08d}"
        item["consent"]["partners"] = item["consent"]["partners"][: 1 + n % 3]  # one to three partners named
    return items


def intake_loop(session, plan: Plan, tally: Tally, withdrawals: Withdrawals, rng: random.Random, began: float):
    """``plan.applicants`` in batches, spread evenly over the fault phase; some consents withdrawn
    0–3 s after their batch returned (their referrals are then queued or in flight)."""
    from bench.scenarios import _intake_cast
    from referrals.models import Consent

    _token, text, partners = _intake_cast()
    batches = (plan.applicants + BATCH - 1) // BATCH
    interval = plan.seconds * 0.9 / batches
    share = 1.5 * plan.withdrawals / plan.applicants  # drawn generously, stopped at the plan's number
    deadline = began + plan.seconds + plan.settle_seconds
    for b in range(batches):
        wait = began + b * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        items = _items(b * BATCH, min(BATCH, plan.applicants - b * BATCH), text, partners)
        answer = _post_until_answered(
            session, "/api/v1/applicants/batch/", {"items": items}, ok=(200,), tally=tally, counter="intake_retries",
            deadline=deadline,
        )  # fmt: skip
        results = answer.json()["results"]
        refused = [r for r in results if r["status"] not in (200, 201)]
        if refused:
            raise RuntimeError(f"intake refused {len(refused)} applicants: {refused[:2]}")
        tally.applicants += len(results)
        chosen = [r["id"] for r in results if rng.random() < share]
        chosen = chosen[: plan.withdrawals - withdrawals.scheduled]
        if chosen:
            of_chosen = Consent.objects.filter(applicant_id__in=chosen).values_list("pk", flat=True)
            consents = _db_retry(lambda of_chosen=of_chosen: list(of_chosen), deadline=deadline)
            for consent_id in consents:
                withdrawals.schedule(str(consent_id), time.monotonic() + rng.uniform(0.0, 3.0))


def fault_schedule(plan: Plan, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds into the phase, fault): kills spread evenly with jitter, Redis and PostgreSQL
    restarts at fixed fractions of the phase (the last Redis one after FLUSHALL)."""
    span = plan.seconds
    faults = [(span * (k + 0.5) / plan.kills + rng.uniform(-2, 2), "kill") for k in range(plan.kills)]
    for r in range(plan.redis_restarts):
        last = r == plan.redis_restarts - 1
        faults.append((span * (0.2 + 0.25 * r), "redis_flush" if last else "redis"))
    faults.extend((span * (0.55 + 0.1 * p), "postgres") for p in range(plan.pg_restarts))
    return sorted((max(1.0, at), name) for at, name in faults)


def fault_loop(schedule, workers: Workers, redis: OwnRedis, postgres, tally: Tally, rng: random.Random, began: float):
    for at, name in schedule:
        wait = began + at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if name == "kill":
            pid = workers.kill_one(rng)
            tally.kills += pid is not None
            detail = f"kill -9 worker {pid}"
        elif name.startswith("redis"):
            flush = name == "redis_flush"
            redis.restart(flush=flush)
            tally.redis_restarts += 1
            tally.redis_flushes += flush
            detail = "Redis FLUSHALL + restart" if flush else "Redis restart"
        else:
            postgres.restart()
            tally.pg_restarts += 1
            detail = "PostgreSQL restart (-m fast)"
        tally.last_fault_at = time.monotonic()
        tally.faults.append(f"{time.monotonic() - began:6.1f} s  {detail}")
        log(detail)


# --- settling and checking ------------------------------------------------------------------------
def _progress(sim: str, started_at) -> dict:
    """What still moves. A referral waiting for a retry the protocol scheduled (30 s, 2 min, 10 min,
    1 h, 6 h) is explicitly waiting, not moving: only work already due counts."""
    import requests
    from django.db.models import Q
    from django.utils import timezone

    from referrals.models import CallbackEvent, Dispatch

    due = Q(status=Dispatch.Status.IN_FLIGHT) | Q(status=Dispatch.Status.PENDING, next_attempt_at__lte=timezone.now())
    return {
        "dispatches_due_or_in_flight": Dispatch.objects.filter(due, created_at__gte=started_at).count(),
        "callbacks_received_not_applied": CallbackEvent.objects.filter(status=CallbackEvent.Status.RECEIVED).count(),
        "callbacks_pending_at_partners": requests.get(sim, timeout=30).json().get("callbacks_pending", 0),
    }


def wait_settled(sim: str, started_at, deadline: float) -> dict:
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            last = _db_retry(lambda: _progress(sim, started_at), deadline=deadline)
        except Exception as exc:  # the simulator busy: ask again
            log(f"progress: {exc!r}")
            time.sleep(5)
            continue
        if not any(last.values()):
            return last
        log("waiting: " + ", ".join(f"{k} {v}" for k, v in last.items()))
        time.sleep(10)
    return last


def run(plan_name: str, *, keep: bool = False) -> int:
    import requests

    plan = PLANS[plan_name]
    CHAOS_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(8)  # noqa: S311 - a reproducible fault plan, not security
    external = os.environ.get("CHAOS_DATABASE_URL")
    if external and not os.environ.get("CHAOS_PG_RESTART"):
        raise SystemExit("CHAOS_DATABASE_URL needs CHAOS_PG_RESTART, the shell command that restarts that server")
    postgres = ExternalPostgres(external, os.environ["CHAOS_PG_RESTART"]) if external else OwnPostgres()
    redis = OwnRedis()
    processes: list[subprocess.Popen] = []
    workers = None
    tally = Tally()
    try:
        log(f"plan {plan_name}: {asdict(plan)}")
        postgres.start()
        redis.start()
        env = {
            **bench_environment(),
            "DATABASE_URL": postgres.url,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis.port}/0",
            "CACHE_URL": f"redis://127.0.0.1:{redis.port}/1",
            "SPILLWAY_SWEEP_SECONDS": "5",
            # A var directory per run: ledger checkpoint files of an earlier run (another database)
            # would otherwise claim the same checkpoint numbers with other roots.
            "SPILLWAY_VAR_DIR": str(CHAOS_DIR / f"var-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"),
        }
        ensure_database(env["DATABASE_URL"], fresh=True)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT,
                       env={**os.environ, **env}, check=True)  # fmt: skip
        setup_django(env)
        from bench.generate import cast
        from bench.scenarios import _intake_cast
        from partners.models import Partner

        cast(PARTNERS)
        token, _text, _partners = _intake_cast()
        sim_port = free_port()
        sim = f"http://127.0.0.1:{sim_port}"
        for partner in Partner.objects.filter(code__startswith="BENCH_P"):
            Partner.objects.filter(pk=partner.pk).update(api_base_url=f"{sim}/{partner.code.lower()}")

        with web_server(env, log=CHAOS_DIR / "web.log") as base:
            workers = Workers(env)
            workers.start()
            beat_command = [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "WARNING"]
            beat = _spawn_logged("beat", beat_command, env)
            processes.append(beat)
            lead = 10.0  # the simulator starts this long before the phase: the downtime window is relative
            processes.append(_spawn_logged("simulator", [
                sys.executable, "manage.py", "simulate_partners", "--host", "127.0.0.1", "--port", str(sim_port),
                "--seed", "8", "--latency-ms", "5", "--spillway-url", base, "--month-seconds", str(plan.month_seconds),
                "--down", f"{DOWN_PARTNER}:{lead + plan.seconds * 0.1}:{plan.down_seconds}", *SIMULATOR_FAULTS,
            ], env))  # fmt: skip
            from bench.flow import _wait_for_simulator

            _wait_for_simulator(sim, processes[-1])
            time.sleep(max(0.0, lead - 2))
            started_at = datetime.datetime.now(datetime.UTC)
            began = time.monotonic()
            session = _api_session(base, token)
            withdrawals = Withdrawals(_api_session(base, token), tally, began + plan.seconds + plan.settle_seconds)
            withdrawals.start()
            schedule = fault_schedule(plan, rng)
            faults = threading.Thread(
                target=fault_loop, args=(schedule, workers, redis, postgres, tally, rng, began), daemon=True
            )
            faults.start()
            log(f"phase: {plan.applicants:,} applicants over {plan.seconds:.0f} s, {len(schedule)} faults")
            intake_loop(session, plan, tally, withdrawals, random.Random(9), began)  # noqa: S311
            withdrawals.close()
            faults.join()
            log(f"intake done ({tally.applicants:,}); last fault {time.monotonic() - tally.last_fault_at:.0f} s ago")
            settled = wait_settled(sim, started_at, tally.last_fault_at + plan.settle_seconds)
            # Freeze the sends before the partners' records are read: without beat no scheduled retry
            # becomes due (the sweeper sends those), then whatever was already moving is let finish.
            # (A retry sent after the snapshot was judged against records that lacked it.)
            stop_process(beat)
            frozen_at = datetime.datetime.now(datetime.UTC)
            settled = wait_settled(sim, started_at, time.monotonic() + 120)
            log(f"settled, beat stopped: {settled}")
            records = requests.get(f"{sim}/_sim/records", timeout=300).json()
            workers.stop()
            for process in processes:
                stop_process(process)
        (CHAOS_DIR / "records.json").write_text(json.dumps(records))
        from bench.chaos_checks import check_all

        findings = check_all(records, withdrawals.returned, started_at=started_at, frozen_at=frozen_at)
        outcome = report(plan_name, plan, tally, withdrawals, settled, records, findings)
        keep = keep or outcome != 0
        return outcome
    except Exception:
        traceback.print_exc()
        keep = True
        return 2
    finally:
        if workers is not None:
            workers.stop()
        for process in processes:
            stop_process(process)
        redis.stop()
        postgres.stop(keep=keep)


def report(plan_name, plan, tally: Tally, withdrawals: Withdrawals, settled: dict, records: dict, findings) -> int:
    deliveries: Counter = Counter()
    requests_by: Counter = Counter()
    for partner in records["partners"].values():
        for request in partner["requests"]:
            requests_by[f"{request['kind']} {request['outcome']}"] += 1
        for event in partner["callbacks"]:
            for delivery in event["deliveries"]:
                deliveries[f"{delivery['tamper'] or 'genuine'} → {delivery['status']}"] += 1
    print()
    print(f"make chaos ({plan_name}): what was done")
    done = [
        ("applicants taken in", f"{tally.applicants:,}", f"{plan.applicants:,}"),
        ("kill -9 of workers", tally.kills, f"≥ {plan.kills}"),
        ("Redis restarts (after FLUSHALL)", f"{tally.redis_restarts} ({tally.redis_flushes})", plan.redis_restarts),
        ("PostgreSQL restarts", tally.pg_restarts, plan.pg_restarts),
        ("consents withdrawn in flight", tally.withdrawals, plan.withdrawals),
        ("API calls retried (intake, withdrawal)", f"{tally.intake_retries}, {tally.withdrawal_retries}", ""),
    ]
    for name, figure, wanted in done:
        print(f"  {name:<44} {figure!s:>12}   {wanted!s}")
    print("  partner requests by outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(requests_by.items())))
    print("  callback deliveries (copy → our answer): " + ", ".join(f"{k} {v}" for k, v in sorted(deliveries.items())))
    if withdrawals.errors:
        print(f"  withdrawals that failed: {withdrawals.errors[:5]}")
    print()
    print("invariants")
    for finding in findings:
        mark = "ok" if finding.ok else "FAIL"
        print(f"  {finding.name:<44} {finding.count!s:>12}   {mark}")
        for example in finding.examples[:5]:
            print(f"      {example}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT_DIR / f"chaos-{plan_name}-{stamp}.json"
    path.write_text(json.dumps({
        "plan": plan_name, "settings": asdict(plan), "done": asdict(tally), "settled": settled,
        "requests": dict(requests_by), "deliveries": dict(deliveries), "withdrawal_errors": withdrawals.errors,
        "withdrawals_returned": withdrawals.returned,
        "invariants": [asdict(f) for f in findings],
    }, indent=2, default=str))  # fmt: skip
    print(f"\nJSON: {path.relative_to(ROOT)}")
    short = tally.kills < plan.kills or tally.pg_restarts < plan.pg_restarts or tally.withdrawals < plan.withdrawals
    if short:
        print("the harness did fewer faults or withdrawals than planned (see above)")
    return 0 if all(f.ok for f in findings) and not short else 1


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop every process it started, as Ctrl-C does
    parser = argparse.ArgumentParser(description="Spillway chaos run")
    parser.add_argument("--plan", choices=sorted(PLANS), default="full")
    parser.add_argument("--keep", action="store_true", help="keep the database cluster (always kept on a failure)")
    args = parser.parse_args(argv)
    return run(args.plan, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
