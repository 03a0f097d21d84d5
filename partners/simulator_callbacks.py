"""The partner simulator's outbound half: a loan's life, told back to Spillway as signed callbacks.

When a simulated partner accepts an application (at once, or after ``pending`` by an
``application.accepted`` callback), :class:`CallbackScheduler` plans the loan's whole life and
delivers each event to ``POST {spillway_url}/api/v1/partners/{code}/callbacks/``, signed with the
partner's secret (``partner-protocol.md`` §3).

Time is compressed per loan: the moment the partner received the application is "now" on both
clocks, and from there one loan month (30 days) passes in ``month_seconds`` of real time. So
``occurred_at`` values are realistic dates that start today, whatever the simulator's uptime.

Everything is drawn from the run's seed and the referral (or event) id, never from arrival order:
the same seed gives the same loans, amounts and chaos in every run. Chaos is per event: extra
copies, delivery-time jitter inside a window (reordering), and extra copies with a stale timestamp
or a wrong signature that Spillway must refuse with 401. Tampered copies come *in addition* to a
correctly signed one, so chaos never loses an event: what Spillway should end up with is exactly
the events of :meth:`CallbackScheduler.events`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import itertools
import json
import logging
import queue
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import requests

from partners import signing

if TYPE_CHECKING:  # the simulator module imports this one at run time
    from partners.simulator import PartnerCredentials

log = logging.getLogger("partners.simulator")

CST = dt.timezone(dt.timedelta(hours=8), "CST")
CENT = Decimal("0.01")
STALE_SECONDS = 600  # twice the protocol's 300 s tolerance: unmistakably stale
TERMS = (3, 6, 9, 12, 18, 24, 36)


@dataclass(frozen=True)
class CallbackConfig:
    """How the simulated partners report back: the loans' lives and the delivery chaos."""

    spillway_url: str = "http://127.0.0.1:8000"
    month_seconds: float = 10.0
    returned_rate: float = 0.03  # of accepted applications: handed back as a duplicate
    approval_rate: float = 0.7  # of accepted applications (not returned): a loan is approved
    disbursement_rate: float = 0.95  # of approved loans: the money goes out
    late_rate: float = 0.05  # per instalment: paid 3–20 days late, after a loan.overdue
    fpd_rate: float = 0.04  # of disbursed loans: instalment 1 never paid (FPD), then defaulted
    default_rate: float = 0.03  # of disbursed loans: stop paying at a later instalment, then defaulted
    duplicates: int = 1  # each event is delivered 1..duplicates times
    reorder_seconds: float = 0.0  # each delivery is delayed by up to this much: order shuffles
    stale_rate: float = 0.0  # of events: one extra copy signed with a 10-minute-old timestamp
    bad_signature_rate: float = 0.0  # of events: one extra copy signed with a wrong secret
    retries: int = 4  # after a 5xx or connection error; a 4xx is never retried
    retry_backoff_seconds: float = 0.5
    workers: int = 4
    request_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        rates = ("returned_rate", "approval_rate", "disbursement_rate", "late_rate", "fpd_rate", "default_rate")
        for name in (*rates, "stale_rate", "bad_signature_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.fpd_rate + self.default_rate > 1.0:
            raise ValueError("fpd_rate + default_rate must not exceed 1")
        if self.month_seconds <= 0:
            raise ValueError("month_seconds must be positive")
        if self.duplicates < 1 or self.workers < 1 or self.retries < 0:
            raise ValueError("duplicates and workers must be at least 1, retries at least 0")
        if self.reorder_seconds < 0 or self.retry_backoff_seconds < 0:
            raise ValueError("reorder_seconds and retry_backoff_seconds must not be negative")
        if not self.spillway_url.startswith(("http://", "https://")):
            raise ValueError(f"spillway_url must be an http(s) URL, not {self.spillway_url!r}")


@dataclass
class CallbackDelivery:
    """One HTTP delivery of an event (a copy), and what Spillway answered."""

    copy: int
    tamper: str | None  # None, "stale" or "bad_signature"
    due_at: float  # wall clock (time.time()) at which it was scheduled
    state: str = "scheduled"  # scheduled | delivered | refused (4xx) | failed | cancelled
    sent_at: float | None = None
    status: int | None = None
    attempts: int = 0
    error: str = ""


@dataclass
class CallbackEvent:
    """One event the partner tells Spillway (the body is signed and sent as is)."""

    partner: str
    segment: str
    event_id: str
    type: str
    referral_id: str
    occurred_at: str
    data: dict[str, Any]
    deliveries: list[CallbackDelivery] = field(default_factory=list)

    def body(self) -> bytes:
        payload = {
            "event_id": self.event_id,
            "type": self.type,
            "referral_id": self.referral_id,
            "occurred_at": self.occurred_at,
            "data": self.data,
        }
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("segment")
        return record


def money(value: Decimal | float | int) -> str:
    return str(Decimal(value).quantize(CENT, ROUND_HALF_UP))


def amortise(principal: Decimal, apr: Decimal, term: int) -> list[tuple[Decimal, Decimal]]:
    """Equal instalments (等额本息): ``(principal, interest)`` per month, to the cent; the last
    instalment takes the rounding remainder so the principal parts add up exactly."""
    rate = apr / 12
    if rate == 0:
        payment = (principal / term).quantize(CENT, ROUND_HALF_UP)
    else:
        payment = (principal * rate / (1 - (1 + rate) ** -term)).quantize(CENT, ROUND_HALF_UP)
    balance, rows = principal, []
    for number in range(1, term + 1):
        interest = (balance * rate).quantize(CENT, ROUND_HALF_UP)
        part = balance if number == term else min(balance, payment - interest)
        rows.append((part, interest))
        balance -= part
    return rows


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day ``months`` later; lenders cap due days at the 28th so every month has one."""
    index = day.month - 1 + months
    return dt.date(day.year + index // 12, index % 12 + 1, min(day.day, 28))


def _round_to(value: Decimal, step: int) -> Decimal:
    return (value / step).quantize(Decimal(1), ROUND_HALF_UP) * step


def _at(day: dt.date, rng: random.Random, first_hour: int = 8, last_hour: int = 21) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, rng.randint(first_hour, last_hour), rng.randint(0, 59), tzinfo=CST)


class CallbackScheduler:
    """Plans each accepted application's life and delivers its events on a compressed clock.

    One scheduler thread releases deliveries when due (postponing those of a partner in a downtime
    window); ``workers`` sender threads post them. A referral always goes to the same sender, so
    without reorder jitter its events reach Spillway in ``occurred_at`` order, retries included.
    """

    def __init__(
        self,
        config: CallbackConfig,
        *,
        seed: int,
        credentials: Callable[[PartnerCredentials], PartnerCredentials] = lambda creds: creds,
        downtime_end: Callable[[str], float | None] = lambda code: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.seed = seed
        self._credentials = credentials  # the partner's current secret (it may have been rotated)
        self._downtime_end = downtime_end  # monotonic end of the partner's current downtime, if any
        self._clock = clock
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, CallbackEvent, CallbackDelivery]] = []
        self._seq = itertools.count()
        self._events: list[CallbackEvent] = []
        self._by_referral: dict[tuple[str, str], list[CallbackEvent]] = {}
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(config.workers)]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._creds: dict[str, PartnerCredentials] = {}

    # --- planning -----------------------------------------------------------------------------
    def _rng(self, *parts: str) -> random.Random:
        return random.Random(":".join((str(self.seed), *parts)))  # noqa: S311 — simulation, not security

    def application_created(
        self,
        creds: PartnerCredentials,
        referral_id: str,
        application_id: str,
        decision: str,
        *,
        later_decision: str | None = None,
        requested_amount: Any = None,
        requested_term_months: Any = None,
    ) -> None:
        """Plan the callbacks of an application just stored: a decision after ``pending``, then
        the loan's life if it was (or will be) accepted."""
        start_mono, start = time.monotonic(), dt.datetime.fromtimestamp(self._clock(), CST)
        rng = self._rng(creds.segment, "life", referral_id)
        planned: list[tuple[dt.datetime, str, dict[str, Any]]] = []
        accepted_at = start
        if decision == "pending" and later_decision in ("accepted", "rejected"):
            accepted_at = start + dt.timedelta(hours=rng.uniform(1, 24))  # manual review
            reason = "approved_on_review" if later_decision == "accepted" else "declined_on_review"
            data = {"application_id": application_id, "reason": reason}
            planned.append((accepted_at, f"application.{later_decision}", data))
        if decision == "accepted" or later_decision == "accepted":
            planned += self._plan_loan(rng, application_id, accepted_at, requested_amount, requested_term_months)
        scale = 30 * 86400 / self.config.month_seconds  # simulated seconds per real second
        events = []
        for number, (when, kind, data) in enumerate(planned, start=1):
            event = CallbackEvent(
                creds.code, creds.segment, f"{application_id}-{number:02d}", kind, referral_id,
                when.isoformat(timespec="seconds"), data,
            )  # fmt: skip
            events.append((start_mono + (when - start).total_seconds() / scale, event))
        with self._lock:
            self._creds[creds.code] = creds
            self._by_referral.setdefault((creds.code, referral_id), []).extend(event for _, event in events)
            self._events.extend(event for _, event in events)
            for due, event in events:
                self._schedule_copies(event, due)
            self._lock.notify()

    def _plan_loan(
        self, rng: random.Random, application_id: str, accepted_at: dt.datetime, amount: Any, term: Any
    ) -> list[tuple[dt.datetime, str, dict[str, Any]]]:
        config = self.config
        if rng.random() < config.returned_rate:
            return [
                (accepted_at + dt.timedelta(hours=rng.uniform(2, 72)), "application.returned", {"reason": "duplicate"})
            ]
        if rng.random() >= config.approval_rate:
            return []  # accepted for review, never approved: the partner goes quiet, as real ones do
        loan_id = "LN" + hashlib.sha256(f"{self.seed}:{application_id}".encode()).hexdigest()[:14].upper()
        try:
            requested = Decimal(str(amount)) if amount is not None else None
        except ArithmeticError:
            requested = None
        if requested is None or not Decimal(1000) <= requested <= Decimal(500000):
            requested = Decimal(rng.randrange(5, 51) * 1000)
        credit_limit = max(Decimal(1000), _round_to(requested * Decimal(str(rng.uniform(0.6, 1.2))), 1000))
        approved_at = accepted_at + dt.timedelta(hours=rng.uniform(1, 48))
        events = [(approved_at, "loan.approved", {"loan_id": loan_id, "credit_limit": money(credit_limit)})]
        if rng.random() >= config.disbursement_rate:
            return events  # approved, never drawn down
        principal = _round_to(min(requested, credit_limit), 100)
        apr = Decimal(rng.randrange(720, 2401)) / 10000  # 7.20 %–24.00 %: inside the judicial-protection cap
        months = int(term) if str(term).isdigit() and int(term) in TERMS else rng.choice((3, 6, 12, 12, 24))
        disbursed_at = approved_at + dt.timedelta(hours=rng.uniform(0.5, 72))
        first_due = add_months(disbursed_at.date(), 1)
        events.append(
            (
                disbursed_at,
                "loan.disbursed",
                {
                    "loan_id": loan_id, "principal": money(principal), "apr": f"{apr:.4f}",
                    "term_months": months, "first_due_date": first_due.isoformat(),
                },
            )
        )  # fmt: skip
        roll = rng.random()
        stops_at = 1 if roll < config.fpd_rate else None
        if stops_at is None and months > 1 and roll < config.fpd_rate + config.default_rate:
            stops_at = rng.randint(2, months)
        last = disbursed_at
        for number, (part, interest) in enumerate(amortise(principal, apr, months), start=1):
            due = add_months(disbursed_at.date(), number)
            if number == stops_at:
                for dpd in (31, 61):
                    data = {
                        "loan_id": loan_id,
                        "installment": number,
                        "due_date": due.isoformat(),
                        "days_past_due": dpd,
                    }
                    events.append((_at(due + dt.timedelta(days=dpd), rng, 9, 10), "loan.overdue", data))
                events.append((_at(due + dt.timedelta(days=91), rng, 9, 10), "loan.defaulted", {"loan_id": loan_id}))
                return events
            if rng.random() < config.late_rate:
                data = {"loan_id": loan_id, "installment": number, "due_date": due.isoformat(), "days_past_due": 1}
                events.append((_at(due + dt.timedelta(days=1), rng, 9, 10), "loan.overdue", data))
                paid = due + dt.timedelta(days=rng.randint(3, 20))
            else:
                paid = due - dt.timedelta(days=rng.choice((0, 0, 0, 1, 2, 5)))
            last = max(_at(paid, rng), last + dt.timedelta(minutes=1))
            data = {
                "loan_id": loan_id, "installment": number, "due_date": due.isoformat(), "paid_date": paid.isoformat(),
                "principal": money(part), "interest": money(interest),
            }  # fmt: skip
            events.append((last, "repayment.posted", data))
        events.append((last + dt.timedelta(minutes=rng.randint(5, 120)), "loan.closed", {"loan_id": loan_id}))
        return events

    def _schedule_copies(self, event: CallbackEvent, due: float) -> None:
        """Queue an event's copies: 1..duplicates good ones, plus the tampered extras (lock held)."""
        rng = self._rng(event.segment, "deliver", event.event_id)
        config = self.config
        tampers: list[str | None] = [None] * rng.randint(1, config.duplicates)
        for tamper, rate in (("stale", config.stale_rate), ("bad_signature", config.bad_signature_rate)):
            if rng.random() < rate:
                tampers.insert(rng.randint(0, len(tampers)), tamper)
        wall = self._clock() + (due - time.monotonic())
        for copy, tamper in enumerate(tampers, start=1):
            jitter = rng.uniform(0, config.reorder_seconds) if config.reorder_seconds else 0.0
            delivery = CallbackDelivery(copy, tamper, wall + jitter)
            event.deliveries.append(delivery)
            heapq.heappush(self._heap, (due + jitter, next(self._seq), event, delivery))

    def referral_withdrawn(self, partner_code: str, referral_id: str) -> int:
        """The consent behind a referral was withdrawn: drop its unsent events unless the loan has
        been disbursed already. Returns how many deliveries were cancelled.

        A withdrawal stops an application the partner has not funded yet; a disbursed loan runs its
        course (the loan contract stands on its own), so its repayments keep being reported."""
        cancelled = 0
        with self._lock:
            events = self._by_referral.get((partner_code, referral_id), [])
            funded = any(e.type == "loan.disbursed" and any(d.sent_at for d in e.deliveries) for e in events)
            if funded:
                return 0
            for event in events:
                for delivery in event.deliveries:
                    if delivery.state == "scheduled" and delivery.sent_at is None:
                        delivery.state, cancelled = "cancelled", cancelled + 1
        return cancelled

    # --- records ------------------------------------------------------------------------------
    def events(self, partner_code: str | None = None) -> list[CallbackEvent]:
        with self._lock:
            return [e for e in self._events if partner_code is None or e.partner == partner_code]

    def records(self, partner_code: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e.as_record() for e in self._events if partner_code is None or e.partner == partner_code]

    def pending(self) -> int:
        """Deliveries not finished yet (scheduled, in a sender's queue, or being retried)."""
        with self._lock:
            return sum(1 for e in self._events for d in e.deliveries if d.state == "scheduled")

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    # --- delivery -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._stopping.clear()
        self._threads.append(threading.Thread(target=self._release_loop, name="sim-callbacks", daemon=True))
        for index, inbox in enumerate(self._queues):
            self._threads.append(
                threading.Thread(target=self._send_loop, args=(inbox,), name=f"sim-callbacks-{index}", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        for inbox in self._queues:
            inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def _release_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                wait = self._heap[0][0] - time.monotonic() if self._heap else 1.0
                if wait > 0:
                    self._lock.wait(timeout=min(wait, 1.0))
                    continue
                due, seq, event, delivery = heapq.heappop(self._heap)
                if delivery.state == "cancelled":
                    continue
                down_until = self._downtime_end(event.partner)
                if down_until is not None:  # a partner that is down sends nothing either
                    heapq.heappush(self._heap, (max(due, down_until), seq, event, delivery))
                    continue
            # One sender per referral: its events cannot overtake each other, retries included.
            self._queues[zlib.crc32(event.referral_id.encode()) % len(self._queues)].put((event, delivery))

    def _send_loop(self, inbox: queue.Queue) -> None:
        session = requests.Session()
        try:
            while (item := inbox.get()) is not None:
                event, delivery = item
                if delivery.state != "cancelled" and not self._stopping.is_set():
                    self._deliver(session, event, delivery)
        finally:
            session.close()

    def _deliver(self, session: requests.Session, event: CallbackEvent, delivery: CallbackDelivery) -> None:
        config = self.config
        creds = self._credentials(self._creds[event.partner])
        url = f"{config.spillway_url.rstrip('/')}/api/v1/partners/{event.partner}/callbacks/"
        body = event.body()
        rng = self._rng(event.segment, "retry", event.event_id, str(delivery.copy))
        for attempt in range(config.retries + 1):
            now = self._clock()
            secret = creds.secret + "-not-the-secret" if delivery.tamper == "bad_signature" else creds.secret
            timestamp = int(now) - (STALE_SECONDS if delivery.tamper == "stale" else 0)
            headers = {"Content-Type": "application/json; charset=utf-8", **signing.sign(secret, body, timestamp)}
            status, error = None, ""
            try:
                status = session.post(
                    url, data=body, headers=headers, timeout=config.request_timeout_seconds
                ).status_code
            except requests.RequestException as exc:
                error = type(exc).__name__
            with self._lock:
                delivery.sent_at = delivery.sent_at or now
                delivery.attempts, delivery.status, delivery.error = attempt + 1, status, error
                if status is not None and status < 500:
                    delivery.state = "delivered" if status < 300 else "refused"
            log.log(
                logging.INFO if status and status < 300 else logging.WARNING,
                "simulator: callback %s %s partner=%s referral=%s copy=%d%s -> %s",
                event.type, event.event_id, event.partner, event.referral_id, delivery.copy,
                f" ({delivery.tamper})" if delivery.tamper else "", status or error,
            )  # fmt: skip
            if status is not None and status < 500:
                return
            backoff = config.retry_backoff_seconds * 2**attempt * rng.uniform(0.8, 1.2)
            if attempt < config.retries and self._stopping.wait(backoff):
                break
        with self._lock:
            delivery.state = "failed"
