"""Dispatch against the partner simulator over real HTTP, with real concurrency and real workers.

- a withdrawal racing many sends: once ``consent_withdraw`` returns, the partner receives nothing
  more under that consent (judged by the simulator's own clock and records), and every partner that
  received data gets exactly one withdrawal notice;
- ``kill -9`` of a Celery worker while the partner holds its application: the sweeper re-sends it
  after the lease, the partner sees the same Idempotency-Key twice and keeps one application;
- a lost Celery message: the sweeper re-enqueues the row and a real worker delivers it.

The data must be committed for other threads and processes to see it (``transaction=True``); the
worker processes get the test database's URL (see ``tests/referrals/workers.py``).
"""

from __future__ import annotations

import datetime
import queue
import random
import threading
import time
from collections import Counter, defaultdict

import pytest
from django.db import connection
from django.utils import timezone

from partners.connectors import ProtocolV1Connector
from partners.models import Partner
from partners.simulator import CredentialStore, PartnerSimulator, SimulatorConfig
from referrals.models import Consent, ConsentEvent, Dispatch, DispatchAttempt, Referral
from referrals.services.consents import consent_withdraw
from referrals.services.dispatch import dispatch_send
from referrals.tasks import dispatch_send_task, dispatch_sweep_task
from tests.factories import make_contract
from tests.referrals import workers
from tests.referrals.workers import wait_for

DATA_KINDS = ("probe", "application")


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def contracts(partners, partnership_manager, compliance_officer):
    return [
        make_contract(partners[0], drafter=partnership_manager, approver=compliance_officer, priority=20),
        make_contract(partners[1], drafter=partnership_manager, approver=compliance_officer, priority=10),
    ]


@pytest.fixture
def run_simulator(partners):
    """``run_simulator(**config)`` → a simulator serving every partner, the partners pointed at it."""
    started: list[PartnerSimulator] = []

    def run(**config) -> PartnerSimulator:
        simulator = PartnerSimulator(
            SimulatorConfig(**{"seed": 20261128, **config}),
            port=0,
            credentials=CredentialStore(refresh_seconds=3600, min_reload_seconds=3600),
        )
        simulator.bind()
        for partner in Partner.objects.all():
            Partner.objects.filter(pk=partner.pk).update(api_base_url=f"{simulator.url}/{partner.code.lower()}")
        simulator.credentials.reload()
        simulator.start()
        started.append(simulator)
        return simulator

    yield run
    for simulator in started:
        simulator.stop()


@pytest.fixture
def send_task():
    """The real task object behind ``dispatch_send_task`` (its ``delay`` is what the code calls)."""
    return dispatch_send_task._get_current_object()


@pytest.fixture
def celery_queue(send_task, monkeypatch):
    """A queue of the test's own on the real broker; the test process publishes dispatches to it."""
    name = workers.new_queue()
    monkeypatch.setitem(send_task.__dict__, "delay", workers.send_to(name))
    yield name
    workers.purge(name)


@pytest.fixture
def start_worker(celery_queue, tmp_path):
    """``start_worker(**env)`` → a running worker process on the test's queue; all stopped at the end."""
    started: list[workers.Worker] = []

    def start(**env) -> workers.Worker:
        worker = workers.start_worker(celery_queue, tmp_path / f"worker-{len(started) + 1}.log", **env)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def intake(origination_api, payload, count: int, *, partners=("PARTNER_A", "PARTNER_B")) -> None:
    items = [payload(seq=i, consent={"partners": list(partners)}) for i in range(1, count + 1)]
    response = origination_api.post("/api/v1/applicants/batch/", {"items": items}, format="json")
    assert response.status_code == 200, response.content
    assert [r["status"] for r in response.json()["results"]] == [201] * count, response.json()


# --- 1. withdrawal racing the sends --------------------------------------------------------------------
APPLICANTS = 30
SENDERS = 12


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_nothing_reaches_a_partner_after_the_withdrawal_returns(
    origination_api, payload, contracts, origination, run_simulator, send_task, monkeypatch
):
    simulator = run_simulator(latency_ms=300, probe_accept_rate=0.8, application_accept_rate=0.7, error_rate=0.1)
    # No rate-limit deferrals (the counters live in the shared cache): every claim here is a send.
    Partner.objects.update(max_requests_per_second=10000)
    # The way there takes time too (the simulator's latency is the partner's own processing): a
    # request that left before the withdrawal may arrive after it — unless the withdrawal waits.
    post = ProtocolV1Connector._post

    def in_transit(self, *args, **kwargs):
        time.sleep(random.uniform(0.0, 0.15))  # network jitter
        return post(self, *args, **kwargs)

    monkeypatch.setattr(ProtocolV1Connector, "_post", in_transit)
    # In-process "workers": whatever the code enqueues (probes, applications, withdrawal notices)
    # goes onto this queue, and SENDERS threads call dispatch_send for it, as Celery workers would.
    work: queue.Queue[list[int]] = queue.Queue()
    monkeypatch.setitem(send_task.__dict__, "delay", lambda ids: work.put(list(ids)))
    intake(origination_api, payload, APPLICANTS)
    assert work.qsize() == APPLICANTS  # one message per applicant (its two probes)

    rng = random.Random(7)
    consent_ids = sorted(Consent.objects.values_list("pk", flat=True), key=str)
    withdrawn = set(rng.sample(consent_ids, APPLICANTS // 2))
    delays = {consent_id: rng.uniform(0.0, 2.5) for consent_id in withdrawn}
    returned_at: dict = {}
    errors: list[str] = []
    outcomes: Counter[str] = Counter()
    stop = threading.Event()
    lock = threading.Lock()

    def sender() -> None:
        try:
            while not stop.is_set():
                try:
                    ids = work.get(timeout=0.05)
                except queue.Empty:
                    continue
                try:
                    for dispatch_id in ids:
                        outcome = dispatch_send(dispatch_id)
                        with lock:
                            outcomes[outcome] += 1
                except Exception as exc:  # reported by the assertions below
                    errors.append(f"dispatch_send{ids}: {exc!r}")
                finally:
                    work.task_done()
        finally:
            connection.close()

    def withdraw(consent_id, delay: float) -> None:
        try:
            time.sleep(delay)
            consent = Consent.objects.get(pk=consent_id)
            consent_withdraw(actor=origination, consent=consent, channel="app", reason="不再需要")
            returned_at[consent_id] = time.time()  # the moment the caller is told "withdrawn"
        except Exception as exc:  # reported by the assertions below
            errors.append(f"consent_withdraw({consent_id}): {exc!r}")
        finally:
            connection.close()

    senders = [threading.Thread(target=sender, name=f"sender-{n}") for n in range(SENDERS)]
    withdrawers = [threading.Thread(target=withdraw, args=(c, d), name=f"withdraw-{c}") for c, d in delays.items()]
    for thread in senders + withdrawers:
        thread.start()
    try:
        for thread in withdrawers:
            thread.join(timeout=60)
        wait_for(lambda: work.unfinished_tasks == 0, 60, "the senders to finish the queued work")
    finally:
        stop.set()
        for thread in senders:
            thread.join(timeout=30)

    assert not errors, errors
    assert set(returned_at) == withdrawn

    consent_of = {str(pk): consent for pk, consent in Referral.objects.values_list("pk", "consent_id")}
    data_requests = [r for r in simulator.requests_received() if r.kind in DATA_KINDS]
    assert all(r.referral_id in consent_of for r in data_requests)

    # Nothing under a withdrawn consent was *received* by a partner after the withdrawal returned.
    late = [
        (r.kind, r.partner, r.referral_id, round(r.received_at - returned_at[consent_of[r.referral_id]], 3))
        for r in data_requests
        if consent_of[r.referral_id] in withdrawn and r.received_at > returned_at[consent_of[r.referral_id]]
    ]
    assert not late, f"received after the withdrawal returned (kind, partner, referral, seconds late): {late}"

    # The ledger agrees: no provision is recorded after a consent's "withdrawn" event.
    for consent_id in withdrawn:
        types = list(ConsentEvent.objects.filter(consent_id=consent_id).order_by("seq").values_list("type", flat=True))
        after = types[types.index("withdrawn") + 1 :]
        assert not {"probe_sent", "application_sent"} & set(after), (consent_id, types)

    # Every partner that received data under a withdrawn consent got exactly one withdrawal notice,
    # keyed "<consent id>:<partner code>"; a partner that received nothing got none.
    received_by: dict = defaultdict(set)
    for r in data_requests:
        received_by[consent_of[r.referral_id]].add(r.partner)
    for consent_id in consent_ids:
        notices = sorted(
            Dispatch.objects.filter(kind="withdrawal_notice", consent_id=consent_id).values_list(
                "partner__code", "idempotency_key"
            )
        )
        expected = sorted((code, f"{consent_id}:{code}") for code in received_by[consent_id])
        sends = list(
            Dispatch.objects.filter(consent_id=consent_id, kind__in=DATA_KINDS).values_list(
                "kind", "partner__code", "status", "attempts", "last_error"
            )
        )
        assert notices == (expected if consent_id in withdrawn else []), (consent_id, notices, expected, sends)

    # The notices that went out were acknowledged once each (a 5xx leaves one for its retry).
    acknowledged = Counter(
        (w["idempotency_key"]) for p in simulator.records()["partners"].values() for w in p["withdrawals"]
    )
    assert all(count == 1 for count in acknowledged.values())
    succeeded = set(Dispatch.objects.filter(kind="withdrawal_notice", status="succeeded").values_list(
        "idempotency_key", flat=True
    ))  # fmt: skip
    assert succeeded == set(acknowledged)

    # The race really happened: some withdrawn applicants had already reached partners, some
    # had sends cancelled or refused, and the consents left alone went their normal way.
    assert sum(1 for c in withdrawn if received_by[c]) >= 3, (dict(received_by), outcomes)
    stopped = Dispatch.objects.filter(consent_id__in=withdrawn, kind__in=DATA_KINDS, status="cancelled").count()
    assert stopped >= 3
    kept = Referral.objects.exclude(consent_id__in=withdrawn)
    assert kept.filter(status="submitted").exists()
    assert not kept.filter(status="cancelled").exists()


# --- 2. kill -9 while the partner holds the application ------------------------------------------------------
HOLD_MS = 3000  # the simulated partner stores the application, then answers only after this


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_application_is_resent_and_the_partner_keeps_one_application(
    origination_api, payload, contracts, run_simulator, start_worker
):
    # Every request is processed at once and answered HOLD_MS later (a slow partner).
    simulator = run_simulator(
        probe_accept_rate=1.0, application_accept_rate=1.0, timeout_rate=1.0, timeout_after_accept_rate=1.0,
        timeout_hold_ms=HOLD_MS,
    )  # fmt: skip
    Partner.objects.filter(code="PARTNER_A").update(timeout_ms=HOLD_MS + 2000)
    worker_env = {"SPILLWAY_DISPATCH_LEASE_MARGIN_SECONDS": "1"}  # lease = timeout + 1 s
    first = start_worker(**worker_env)
    first.wait_ready()

    intake(origination_api, payload, 1, partners=("PARTNER_A",))  # the probe goes to the worker
    referral = Referral.objects.get()
    [application] = wait_for(
        lambda: simulator.requests_received(kind="application"), 30, "the partner to receive the application"
    )
    first.kill9()  # mid-call: the partner has stored the application and is holding its answer

    dispatch = Dispatch.objects.get(kind="application")
    assert (dispatch.status, dispatch.attempts) == ("in_flight", 1)
    assert Referral.objects.get(pk=referral.pk).status == "submitting"
    assert not DispatchAttempt.objects.filter(dispatch=dispatch).exists()  # the answer was never recorded

    second = start_worker(**worker_env)
    second.wait_ready()
    wait_for(lambda: timezone.now() > dispatch.lease_expires_at, 15, "the lease to run out")
    swept = dispatch_sweep_task()  # what beat runs every few seconds
    assert (swept["lease_expired"], swept["enqueued"]) == (1, 1)

    wait_for(lambda: Referral.objects.get(pk=referral.pk).status == "submitted", 30, "the referral to be submitted")
    dispatch.refresh_from_db()
    assert (dispatch.status, dispatch.attempts) == ("succeeded", 2)
    assert list(DispatchAttempt.objects.filter(dispatch=dispatch, outcome="success").values_list("number")) == [(2,)]

    def both_answered():
        found = simulator.requests_received(kind="application")
        return found if len(found) == 2 and all(r.status is not None for r in found) else None

    requests = wait_for(both_answered, 10, "both application requests to be answered")
    assert [r.idempotency_key for r in requests] == [str(referral.pk)] * 2
    assert requests[0].received_at == application.received_at
    [stored] = simulator.applications_for("PARTNER_A")
    assert stored.referral_id == str(referral.pk)
    assert requests[1].answer == requests[0].answer == stored.answer  # the second answer is the first, replayed
    referral.refresh_from_db()
    assert referral.application_id == stored.answer["application_id"]
    assert dispatch.result["application_id"] == stored.answer["application_id"]
    sent = ConsentEvent.objects.filter(consent_id=referral.consent_id, type="application_sent")
    assert sent.count() == 2  # each attempt is a provision in the ledger


# --- 3. a lost message ---------------------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_sweeper_re_enqueues_a_lost_message_and_a_real_worker_delivers_it(
    origination_api, payload, contracts, run_simulator, start_worker, send_task, celery_queue, monkeypatch
):
    simulator = run_simulator(probe_accept_rate=1.0, application_accept_rate=1.0)
    worker = start_worker()
    with monkeypatch.context() as lost:
        lost.setitem(send_task.__dict__, "delay", lambda *args, **kwargs: None)  # the message never arrives
        intake(origination_api, payload, 1, partners=("PARTNER_A",))
    probe = Dispatch.objects.get(kind="probe")
    Dispatch.objects.filter(pk=probe.pk).update(enqueued_at=timezone.now() - datetime.timedelta(minutes=10))
    worker.wait_ready()
    time.sleep(1)
    assert not simulator.requests_received()  # nothing was sent: the message is lost

    swept = dispatch_sweep_task()
    assert swept["enqueued"] == 1

    referral = Referral.objects.get()
    wait_for(lambda: Referral.objects.get(pk=referral.pk).status == "submitted", 30, "the referral to move on")
    probe.refresh_from_db()
    assert (probe.status, probe.attempts) == ("succeeded", 1)
    assert Dispatch.objects.get(kind="application").status == "succeeded"  # enqueued by the worker itself
    kinds = [(r.kind, r.referral_id, r.status) for r in simulator.requests_received()]
    assert kinds == [("probe", str(referral.pk), 200), ("application", str(referral.pk), 200)]
