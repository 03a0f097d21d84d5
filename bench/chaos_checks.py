"""The promises ``make chaos`` checks once the run is over, against the partner simulator's own records.

``check_all(records, withdrawals, started_at=…)`` returns one :class:`Finding` per invariant:

1. **lost** — referrals still open with nothing scheduled for them, outbox rows not final, callback
   events received but never applied, genuine events Spillway refused or never took;
2. **duplicate applications** — a referral with two application ids at partners, or an applicant
   placed with more partners than ``SPILLWAY_MAX_APPLICATIONS_PER_APPLICANT``;
3. **unconsented sends** — data a partner received after the withdrawal returned, for a partner the
   consent does not name, without its ledger record, or recorded after the consent ended;
4. **bad callbacks accepted** — stale or badly signed copies answered 2xx, events in the database
   that the partner never sent (or sent otherwise);
5. **replay** — the database against an in-order replay of the partner's events, folded here from
   ``partner-protocol.md`` §3 (not by ``referrals/services/callbacks.py``);
6. **settlement difference** — the real engine (``run_execute``, what the finance run executes) for
   every period touched, against a plain recomputation from ``settlement-rules.md``;
7. **ledger** — ``ledger_verify`` (what ``manage.py verify_ledger`` runs).

Reads are in bulk (a handful of queries whatever the number of referrals); the settlement engine
writes draft statements, which is what running it means. Nothing here starts a process.
"""

from __future__ import annotations

import datetime
import hashlib
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from partners.models import Contract, Partner
from referrals import merkle
from referrals.models import (
    CallbackEvent,
    Consent,
    ConsentEvent,
    ConsentRecipient,
    Dispatch,
    Loan,
    LoanOverdue,
    Reclaim,
    Referral,
    Repayment,
)
from referrals.services.ledger import ledger_verify
from settlements.models import SettlementRun, Statement, StatementLine
from settlements.services.runs import run_execute

SHANGHAI = ZoneInfo("Asia/Shanghai")
CENT = Decimal("0.01")
EXAMPLES = 5
DATA_KINDS = ("probe", "application")
# The caller read the partner's answer (a timeout_after_accept was answered to nobody).
ANSWERED = ("answered", "replayed")
PROVISION = {ConsentEvent.Type.PROBE_SENT: "probe", ConsentEvent.Type.APPLICATION_SENT: "application"}
ENDED = (ConsentEvent.Type.WITHDRAWN, ConsentEvent.Type.EXPIRED)
S = Referral.Status


@dataclass
class Finding:
    """One invariant: the figure printed, whether it holds, and up to five examples when not."""

    name: str
    count: int | str
    ok: bool
    examples: list[str] = field(default_factory=list)
    note: str = ""  # context printed nowhere by default: what was judged, what could not be


def _finding(name: str, problems: list[str], note: str = "", *, count: int | None = None) -> Finding:
    figure = len(problems) if count is None else count
    return Finding(name, figure, figure == 0, problems[:EXAMPLES], note)


# --- what the simulator saw ---------------------------------------------------------------------------
def _epoch(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class Sim:
    """``records`` indexed: requests, applications and events per partner code and referral."""

    def __init__(self, records: dict) -> None:
        partners = records.get("partners") or {}
        self.requests: list[dict] = []
        self.applications: dict[tuple[str, str], list[dict]] = {}
        self.events: list[tuple[str, int, dict]] = []  # (partner code, generation order, event)
        self.event_digest: dict[tuple[str, str], str] = {}  # events sent at least once untampered
        self.acknowledged: set[tuple[str, str]] = set()  # an untampered copy answered 2xx
        self.application_answered: set[tuple[str, str]] = set()  # Spillway read a 2xx answer
        self.reclaims_acknowledged: set[str] = set()
        for code, seen in partners.items():
            for request in seen.get("requests", []):
                request = {**request, "partner": request.get("partner") or code}
                self.requests.append(request)
                status = request.get("status")
                if status is not None and 200 <= status < 300 and request.get("outcome") in ANSWERED:
                    if request.get("kind") == "application":
                        referral_id = request.get("referral_id") or request.get("idempotency_key")
                        self.application_answered.add((code, str(referral_id)))
                    elif request.get("kind") == "reclaim" and request.get("idempotency_key"):
                        self.reclaims_acknowledged.add(str(request["idempotency_key"]))
            for referral_id, apps in (seen.get("applications") or {}).items():
                self.applications[(code, str(referral_id))] = list(apps)
            for order, event in enumerate(seen.get("callbacks", [])):
                code_ = event.get("partner") or code
                self.events.append((code_, order, event))
                genuine = [d for d in event.get("deliveries", []) if not d.get("tamper")]
                key = (code_, str(event.get("event_id")))
                if any(d.get("sent_at") is not None or d.get("attempts") for d in genuine):
                    self.event_digest[key] = hashlib.sha256(merkle.canonical_json(_body(event))).hexdigest()
                if any(_ok(d.get("status")) for d in genuine):
                    self.acknowledged.add(key)

    def decision(self, code: str, referral_id: str) -> tuple[str | None, str]:
        """The partner's answer to the application (``None``: it holds none) and its id."""
        apps = self.applications.get((code, referral_id))
        if not apps:
            return None, ""
        return apps[0].get("decision"), apps[0].get("application_id") or ""


def _body(event: dict) -> dict:
    return {name: event.get(name) for name in ("event_id", "type", "referral_id", "occurred_at", "data")}


def _ok(status: Any) -> bool:
    return isinstance(status, int) and 200 <= status < 300


# --- what the database holds -------------------------------------------------------------------------
class Ref(NamedTuple):
    id: str
    applicant_id: str
    consent_id: str
    partner_id: int
    contract_id: int
    status: str
    accepted_at: datetime.datetime | None
    returned_at: datetime.datetime | None
    application_id: str
    created_at: datetime.datetime


REF_FIELDS = (
    "pk", "applicant_id", "consent_id", "partner_id", "contract_id", "status", "accepted_at", "returned_at",
    "application_id", "created_at",
)  # fmt: skip


def _ref(row: tuple) -> Ref:
    pk, applicant, consent, *rest = row
    return Ref(str(pk), str(applicant), str(consent), *rest)


@dataclass
class World:
    """The database's side, read in bulk once: every referral created since ``started_at``."""

    started_at: datetime.datetime
    now: datetime.datetime
    referrals: dict[str, Ref]
    partner_code: dict[int, str]
    partner_id: dict[str, int]
    consents: dict[str, tuple[str, datetime.datetime]]  # id → (status, expires_at)
    recipients: set[tuple[str, int]]  # (consent id, partner id)
    provisions: Counter  # (partner code, referral id, kind) → ledger events
    ledger_problems: list[str]  # provisions recorded after the consent ended
    db_events: list[tuple]  # (partner code, event id, status, body sha256, referral id, type)
    unfinished: list[tuple]  # outbox rows of the run not final: (pk, kind, status, due, referral, applicant, error)
    _older: dict[str, Ref | None] = field(default_factory=dict)
    frozen_at: datetime.datetime | None = None

    @property
    def due_before(self) -> datetime.datetime:
        """A pending row due after this is waiting: now, or shortly before beat was stopped (the
        sweeper runs every few seconds, so what fell due before that was its to send)."""
        return self.frozen_at - datetime.timedelta(seconds=15) if self.frozen_at else self.now

    @classmethod
    def load(cls, started_at: datetime.datetime, frozen_at: datetime.datetime | None = None) -> World:
        ours = Referral.objects.filter(created_at__gte=started_at)
        referrals = {str(row[0]): _ref(row) for row in ours.values_list(*REF_FIELDS).iterator(chunk_size=5000)}
        partners = dict(Partner.objects.values_list("pk", "code"))
        consent_ids = ours.values("consent_id")
        consents = {
            str(pk): (status, expires)
            for pk, status, expires in Consent.objects.filter(pk__in=consent_ids).values_list(
                "pk", "status", "expires_at"
            )
        }
        recipients = {
            (str(consent), partner)
            for consent, partner in ConsentRecipient.objects.filter(consent_id__in=consent_ids).values_list(
                "consent_id", "partner_id"
            )
        }
        provisions: Counter = Counter()
        problems: list[str] = []
        ended: dict[str, str] = {}
        rows = (
            ConsentEvent.objects.filter(consent_id__in=consent_ids, type__in=(*PROVISION, *ENDED))
            .order_by("consent_id", "seq")
            .values_list("consent_id", "seq", "type", "occurred_at", "payload")
        )
        for consent, seq, type_, occurred_at, payload in rows.iterator(chunk_size=5000):
            consent = str(consent)
            if type_ in ENDED:
                ended.setdefault(consent, f"{type_} (#{seq})")
                continue
            kind, partner, referral = PROVISION[type_], payload.get("partner"), str(payload.get("referral"))
            provisions[(partner, referral, kind)] += 1
            where = f"ledger: consent {consent} #{seq} {type_} to {partner} (referral {referral})"
            if consent in ended:
                problems.append(f"{where} recorded after it was {ended[consent]}")
            elif consent in consents and occurred_at >= consents[consent][1]:
                problems.append(f"{where} at {occurred_at:%Y-%m-%d %H:%M:%S}, after the consent expired")
        db_events = [
            (partners.get(partner), event_id, status, digest, str(referral), type_)
            for partner, event_id, status, digest, referral, type_ in CallbackEvent.objects.filter(
                referral__created_at__gte=started_at
            )
            .values_list("partner_id", "event_id", "status", "body_sha256", "referral_id", "type")
            .iterator(chunk_size=5000)
        ]
        unfinished = list(
            Dispatch.objects.filter(
                created_at__gte=started_at, status__in=(Dispatch.Status.PENDING, Dispatch.Status.IN_FLIGHT)
            ).values_list(
                "pk", "kind", "status", "next_attempt_at", "referral_id", "referral__applicant_id", "last_error"
            )
        )
        return cls(
            started_at=started_at, now=timezone.now(), frozen_at=frozen_at, referrals=referrals, partner_code=partners,
            partner_id={code: pk for pk, code in partners.items()}, consents=consents, recipients=recipients,
            provisions=provisions, ledger_problems=problems, db_events=db_events, unfinished=unfinished,
        )  # fmt: skip

    def older(self, referral_ids: Iterable[str]) -> None:
        """Look up, in chunks, referrals that requests name but that were not created in the run."""
        wanted = sorted({r for r in referral_ids if r not in self.referrals and r not in self._older})
        valid = []
        for referral_id in wanted:
            try:
                valid.append(uuid.UUID(referral_id))
            except ValueError:
                self._older[referral_id] = None
        for start in range(0, len(valid), 500):
            chunk = valid[start : start + 500]
            found = {str(row[0]): _ref(row) for row in Referral.objects.filter(pk__in=chunk).values_list(*REF_FIELDS)}
            for referral_id in map(str, chunk):
                self._older[referral_id] = found.get(referral_id)

    def waiting(self) -> list[tuple]:
        """Outbox rows with a retry (or a deferral: circuit open, partner paused) scheduled."""
        return [row for row in self.unfinished if row[2] == Dispatch.Status.PENDING and row[3] > self.due_before]

    def known_elsewhere(self, referral_id: str) -> bool:
        """A referral from before the run (not judged), as opposed to one the database lacks."""
        return self._older.get(referral_id) is not None


# --- 1. lost -------------------------------------------------------------------------------------------
def check_lost(world: World, sim: Sim) -> Finding:
    """Open referrals with nothing scheduled, outbox rows not final, events stuck or never taken."""
    problems: list[str] = []
    waiting = world.waiting()
    # Waiting, not lost: the sweeper sends it when it is due; its applicant's other referrals wait too.
    waiting_applicants, waiting_pks = {str(row[5]) for row in waiting}, {row[0] for row in waiting}
    for pk, kind, status, next_at, _referral, _applicant, error in world.unfinished:
        if pk not in waiting_pks:
            problems.append(f"dispatch {pk} ({kind}) still {status}, due {next_at:%H:%M:%S}: {error or '-'}")
    open_waiting = 0
    for ref in world.referrals.values():
        if ref.status not in Referral.OPEN:
            continue
        if ref.applicant_id in waiting_applicants:
            open_waiting += 1
            continue
        problems.append(f"referral {ref.id} still {ref.status} with nothing scheduled for it")
    for code, event_id, status, _digest, referral, type_ in world.db_events:
        if status == CallbackEvent.Status.RECEIVED:
            problems.append(f"callback {code}:{event_id} ({type_}, referral {referral}) received, never applied")
    in_db = {(code, event_id) for code, event_id, *_ in world.db_events}
    undelivered = 0
    for code, _order, event in sim.events:
        key = (code, str(event.get("event_id")))
        if key in sim.acknowledged or key in in_db or str(event.get("referral_id")) not in world.referrals:
            continue
        genuine = [d for d in event.get("deliveries", []) if not d.get("tamper")]
        if any(d.get("state") in ("failed", "refused") for d in genuine):
            answers = ", ".join(str(d.get("status") or d.get("error") or d.get("state")) for d in genuine)
            problems.append(f"event {code}:{key[1]} ({event.get('type')}) never taken by Spillway: {answers}")
        elif any(d.get("state") == "scheduled" for d in genuine):
            undelivered += 1
    note = (
        f"{len(world.referrals)} referrals judged; waiting (a retry or deferral scheduled): {open_waiting} open "
        f"referrals, {len(waiting)} dispatches; {undelivered} partner events still scheduled at the partners"
    )
    return _finding("lost", problems, note)


# --- 2. duplicate applications ---------------------------------------------------------------------------
def check_duplicates(world: World, sim: Sim) -> Finding:
    """Per referral: one application id at one partner. Per applicant: placed with at most the limit.

    The simulator derives an application's id from the referral id and keys it by the Idempotency-Key,
    so the per-referral count can only fire on a key that is not the referral id; the per-applicant
    count is the one a double send (the next partner tried while the first still holds it) shows."""
    problems: list[str] = []
    per_referral: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for (code, referral_id), apps in sim.applications.items():
        if referral_id in world.referrals:
            per_referral[referral_id].update((code, str(app.get("application_id"))) for app in apps)
    for referral_id, ids in sorted(per_referral.items()):
        if len(ids) > 1:
            listed = ", ".join(f"{code}:{app}" for code, app in sorted(ids))
            problems.append(f"referral {referral_id}: {len(ids)} applications at partners ({listed})")
    limit = settings.SPILLWAY_MAX_APPLICATIONS_PER_APPLICANT
    placed: dict[str, list[str]] = defaultdict(list)
    for (code, referral_id), apps in sim.applications.items():
        ref = world.referrals.get(referral_id)
        if ref is not None and ref.status in (S.SUBMITTED, S.RETURNED) and apps[0].get("decision") != "rejected":
            placed[ref.applicant_id].append(f"{code}:{referral_id}")
    over = 0
    for applicant, where in sorted(placed.items()):
        if len(where) > limit:
            over += len(where) - limit
            problems.append(f"applicant {applicant} placed with {len(where)} partners (limit {limit}): {where}")
    count = sum(1 for ids in per_referral.values() if len(ids) > 1) + over
    note = f"{len(per_referral)} referrals with an application at a partner"
    return _finding("duplicate applications", problems, note, count=count)


# --- 3. unconsented sends ---------------------------------------------------------------------------------
def _referral_of(request: dict) -> str | None:
    """Applications carry the referral id as their Idempotency-Key, so even a request refused before
    its body was read (down, bad signature) is known; a probe refused so is not."""
    referral_id = request.get("referral_id")
    if not referral_id and request.get("kind") == "application":
        referral_id = request.get("idempotency_key")
    return str(referral_id) if referral_id else None


def check_unconsented(world: World, sim: Sim, withdrawals: dict[str, float]) -> Finding:
    """Every probe or application a partner *received* — whatever it answered, since the data had
    arrived — must be covered by the consent at that moment and recorded in the ledger first."""
    start = world.started_at.timestamp()
    requests = [
        r for r in sim.requests if r.get("kind") in DATA_KINDS and _epoch(r.get("received_at")) >= start
    ]  # fmt: skip
    world.older(filter(None, map(_referral_of, requests)))
    flagged: dict[int, str] = {}
    per_key: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    unattributable = 0
    for index, request in enumerate(requests):
        code, kind, received = request["partner"], request["kind"], _epoch(request.get("received_at"))
        referral_id = _referral_of(request)
        if referral_id is None:
            unattributable += 1
            continue
        ref = world.referrals.get(referral_id)
        what = f"{kind} to {code} for referral {referral_id} ({request.get('outcome') or 'no answer'})"
        if ref is None:
            if not world.known_elsewhere(referral_id):
                flagged[index] = f"{what}: no such referral in the database"
            continue
        reasons = []
        returned = withdrawals.get(ref.consent_id)
        if returned is not None and received > returned:
            reasons.append(f"received {received - returned:.3f} s after the withdrawal of {ref.consent_id} returned")
        partner = world.partner_id.get(code)
        if partner != ref.partner_id:
            reasons.append(f"the referral is {world.partner_code.get(ref.partner_id)}'s")
        if (ref.consent_id, partner) not in world.recipients:
            reasons.append(f"consent {ref.consent_id} does not name {code}")
        named = request.get("consent_id")
        if named and str(named) != ref.consent_id:
            reasons.append(f"sent under consent {named}, the referral's is {ref.consent_id}")
        if reasons:
            flagged[index] = f"{what}: " + "; ".join(reasons)
        per_key[(code, referral_id, kind)].append(index)
    # The ledger event is written before the bytes leave: a partner cannot receive more than recorded.
    for key, indexes in per_key.items():
        recorded = world.provisions.get(key, 0)
        if len(indexes) > recorded:
            extra = sorted(indexes, key=lambda i: _epoch(requests[i].get("received_at")))[recorded:]
            for index in extra:
                what = f"{key[2]} to {key[0]} for referral {key[1]}"
                flagged.setdefault(index, f"{what}: {len(indexes)} received, {recorded} in the ledger")
    problems = [flagged[i] for i in sorted(flagged)] + world.ledger_problems
    note = (
        f"{len(requests)} probes and applications received since the start; {unattributable} refused before "
        "their body was read (partner down, bad signature) name no referral and could not be judged"
    )
    return _finding("unconsented sends", problems, note)


# --- 4. bad callbacks accepted -------------------------------------------------------------------------------
def check_bad_callbacks(world: World, sim: Sim) -> Finding:
    problems: list[str] = []
    for code, _order, event in sim.events:
        for delivery in event.get("deliveries", []):
            if delivery.get("tamper") and _ok(delivery.get("status")):
                problems.append(
                    f"{delivery['tamper']} copy {delivery.get('copy')} of {code}:{event.get('event_id')} "
                    f"({event.get('type')}) answered {delivery['status']}"
                )
    for code, event_id, _status, digest, referral, type_ in world.db_events:
        sent = sim.event_digest.get((code, event_id))
        if sent is None:
            problems.append(f"stored event {code}:{event_id} ({type_}, referral {referral}) never sent untampered")
        elif sent != digest:
            problems.append(f"stored event {code}:{event_id} ({type_}) differs from what the partner sent")
    return _finding("bad callbacks accepted", problems, f"{len(world.db_events)} stored events checked")


# --- 5. the in-order replay ---------------------------------------------------------------------------------
@dataclass
class LoanState:
    """A loan as the partner's events describe it, applied in order."""

    loan_id: str
    status: str = Loan.Status.APPROVED
    credit_limit: Decimal | None = None
    principal: Decimal | None = None
    apr: Decimal | None = None
    term_months: int | None = None
    first_due_date: datetime.date | None = None
    approved_at: datetime.datetime | None = None
    disbursed_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    repayments: dict[int, tuple[Decimal, Decimal, datetime.date]] = field(default_factory=dict)
    overdues: dict[tuple[int, int], datetime.datetime] = field(default_factory=dict)


@dataclass
class ReferralState:
    """Where a referral's events leave it: status, the times the events set, its loans."""

    status: str | None
    application_id: str = ""
    accepted_at: datetime.datetime | None = None  # set by an ``application.accepted`` callback only
    returned_at: datetime.datetime | None = None
    loans: dict[str, LoanState] = field(default_factory=dict)


BASE_STATUS = {"accepted": S.SUBMITTED, "pending": S.SUBMITTING, "rejected": S.REJECTED}


def _money(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def replay(events: Iterable[dict], *, decision: str | None, application_id: str = "") -> ReferralState:
    """Fold one referral's events, in order of ``occurred_at`` (ties: the order given), into its state.

    Written from ``partner-protocol.md`` §3: the application's synchronous answer (``decision``)
    is the starting point; ``application.accepted`` / ``rejected`` decide a pending application;
    ``application.returned`` hands back an accepted one; a loan is approved once (the first approval
    counts), disbursed once, repaid once per instalment, reported overdue once per instalment and
    number of days, and ends closed or defaulted — the later report decides. A repayment or an
    overdue notice means the money went out (the loan is at least disbursed)."""
    state = ReferralState(BASE_STATUS.get(decision or ""), application_id)
    timed = [(datetime.datetime.fromisoformat(e["occurred_at"]), n, e) for n, e in enumerate(events)]
    for when, _n, event in sorted(timed, key=lambda t: (t[0], t[1])):
        kind, data = event["type"], event.get("data") or {}
        if kind in ("application.accepted", "application.rejected"):
            if state.status == S.SUBMITTING:
                if kind == "application.accepted":
                    state.status, state.accepted_at = S.SUBMITTED, when
                    state.application_id = data.get("application_id") or state.application_id
                else:
                    state.status = S.REJECTED
            continue
        if kind == "application.returned":
            if state.status == S.SUBMITTED:
                state.status, state.returned_at = S.RETURNED, when
            continue
        loan = state.loans.setdefault(str(data["loan_id"]), LoanState(str(data["loan_id"])))
        if kind == "loan.approved":
            if loan.approved_at is None:
                loan.approved_at, loan.credit_limit = when, _money(data.get("credit_limit"))
        elif kind == "loan.disbursed":
            if loan.disbursed_at is None:
                loan.disbursed_at, loan.principal, loan.apr = when, _money(data["principal"]), _money(data["apr"])
                loan.term_months = int(data["term_months"])
                loan.first_due_date = datetime.date.fromisoformat(data["first_due_date"])
            if loan.status == Loan.Status.APPROVED:
                loan.status = Loan.Status.DISBURSED
        elif kind == "repayment.posted":
            loan.repayments.setdefault(
                int(data["installment"]),
                (_money(data["principal"]), _money(data["interest"]), datetime.date.fromisoformat(data["paid_date"])),
            )
            if loan.status == Loan.Status.APPROVED:
                loan.status = Loan.Status.DISBURSED
        elif kind == "loan.overdue":
            loan.overdues.setdefault((int(data["installment"]), int(data["days_past_due"])), when)
            if loan.status == Loan.Status.APPROVED:
                loan.status = Loan.Status.DISBURSED
        elif kind in ("loan.closed", "loan.defaulted"):
            loan.status = Loan.Status.CLOSED if kind == "loan.closed" else Loan.Status.DEFAULTED
            loan.ended_at = when
    return state


@dataclass
class DbLoan:
    pk: int
    referral_id: str
    row: dict
    repayments: dict[int, tuple[Decimal, Decimal, datetime.date]] = field(default_factory=dict)
    overdues: dict[tuple[int, int], datetime.datetime] = field(default_factory=dict)


LOAN_FIELDS = (
    "status", "credit_limit", "principal", "apr", "term_months", "first_due_date", "approved_at", "disbursed_at",
    "ended_at",
)  # fmt: skip


def load_loans(started_at: datetime.datetime) -> dict[tuple[int, str], DbLoan]:
    """Every loan of the run's referrals, with its repayments and overdue reports: three queries."""
    loans: dict[tuple[int, str], DbLoan] = {}
    by_pk: dict[int, DbLoan] = {}
    rows = Loan.objects.filter(referral__created_at__gte=started_at).values(
        "pk", "partner_id", "loan_id", "referral_id", *LOAN_FIELDS
    )
    for row in rows.iterator(chunk_size=5000):
        loan = DbLoan(row["pk"], str(row["referral_id"]), row)
        loans[(row["partner_id"], row["loan_id"])] = by_pk[row["pk"]] = loan
    repayments = Repayment.objects.filter(loan__referral__created_at__gte=started_at).values_list(
        "loan_id", "installment", "principal", "interest", "paid_date"
    )
    for loan_pk, installment, principal, interest, paid in repayments.iterator(chunk_size=5000):
        by_pk[loan_pk].repayments[installment] = (principal, interest, paid)
    overdues = LoanOverdue.objects.filter(loan__referral__created_at__gte=started_at).values_list(
        "loan_id", "installment", "days_past_due", "occurred_at"
    )
    for loan_pk, installment, dpd, occurred_at in overdues.iterator(chunk_size=5000):
        by_pk[loan_pk].overdues[(installment, dpd)] = occurred_at
    return loans


def _loan_differences(loan_id: str, expected: LoanState | None, got: DbLoan | None) -> list[str]:
    if expected is None:
        return [f"loan {loan_id} is in the database, not in the partner's events"]
    if got is None:
        return [f"loan {loan_id} ({expected.status}) is missing from the database"]
    diffs = []
    for name in LOAN_FIELDS:
        want, have = getattr(expected, name), got.row[name]
        if want != have:
            diffs.append(f"loan {loan_id} {name}: database {have}, replay {want}")
    if expected.repayments != got.repayments:
        want_sum = [sum(p[i] for p in expected.repayments.values()) for i in (0, 1)]
        have_sum = [sum(p[i] for p in got.repayments.values()) for i in (0, 1)]
        diffs.append(
            f"loan {loan_id} repayments: database {len(got.repayments)} (principal {have_sum[0]}, interest "
            f"{have_sum[1]}), replay {len(expected.repayments)} (principal {want_sum[0]}, interest {want_sum[1]})"
        )
    if set(expected.overdues) != set(got.overdues):
        diffs.append(
            f"loan {loan_id} overdue reports: database {sorted(got.overdues)}, replay {sorted(expected.overdues)}"
        )
    return diffs


DECIDED = (S.SUBMITTED, S.RETURNED, S.REJECTED)  # the partner must hold the application


def _referral_differences(
    ref: Ref, state: ReferralState, consent_status: str, answered: bool, retrying: bool
) -> list[str]:
    diffs = []
    if state.status is None and ref.status in DECIDED:
        diffs.append(f"status: database {ref.status}, but the partner holds no application")
    if state.status is not None:
        allowed = {state.status}
        if ref.accepted_at is None:
            if consent_status in (Consent.Status.WITHDRAWN, Consent.Status.EXPIRED):
                allowed.add(S.CANCELLED)  # the withdrawal overtook the answer; later events are ignored
            if not answered:
                allowed.add(S.FAILED)  # every answer to the application was lost on the way back
            if retrying:
                allowed.add(S.SUBMITTING)  # the answer was lost and the retry is scheduled (waiting)
        if ref.status not in allowed:
            diffs.append(f"status: database {ref.status}, replay {state.status}")
        if (
            state.accepted_at is not None
            and ref.status in (S.SUBMITTED, S.RETURNED)
            and ref.accepted_at != state.accepted_at
        ):
            diffs.append(f"accepted_at: database {ref.accepted_at}, replay {state.accepted_at}")
        if ref.status in (S.SUBMITTED, S.RETURNED) and ref.accepted_at is None:
            diffs.append("accepted_at missing")
        if state.status == S.RETURNED and ref.status == S.RETURNED and ref.returned_at != state.returned_at:
            diffs.append(f"returned_at: database {ref.returned_at}, replay {state.returned_at}")
        if ref.status in (S.SUBMITTED, S.RETURNED) and state.application_id != ref.application_id:
            diffs.append(f"application_id: database {ref.application_id!r}, partner {state.application_id!r}")
    return diffs


@dataclass
class Replayed:
    """The replay's results, shared with the settlement recomputation."""

    states: dict[str, ReferralState]
    loans: dict[tuple[int, str], DbLoan]


def events_by_referral(world: World, sim: Sim) -> dict[str, list[dict]]:
    """The distinct genuine events Spillway took (answered 2xx, or stored), per referral, in the
    order the simulator generated them."""
    stored = {(code, event_id) for code, event_id, *_ in world.db_events}
    grouped: dict[str, list[dict]] = defaultdict(list)
    for code, _order, event in sim.events:
        key = (code, str(event.get("event_id")))
        referral_id = str(event.get("referral_id"))
        if referral_id in world.referrals and (key in sim.acknowledged or key in stored):
            grouped[referral_id].append(event)
    return grouped


def check_replay(world: World, sim: Sim) -> tuple[Finding, Replayed]:
    loans = load_loans(world.started_at)
    db_loans: dict[str, dict[str, DbLoan]] = defaultdict(dict)
    for (_partner, loan_id), loan in loans.items():
        db_loans[loan.referral_id][loan_id] = loan
    grouped = events_by_referral(world, sim)
    judged = set(grouped) | set(db_loans)
    for _code, referral_id in sim.applications:
        if referral_id in world.referrals:
            judged.add(referral_id)
    judged.update(ref.id for ref in world.referrals.values() if ref.status in DECIDED)
    retrying = {str(row[4]) for row in world.waiting() if row[1] == Dispatch.Kind.APPLICATION}
    states: dict[str, ReferralState] = {}
    problems = []
    for referral_id in sorted(judged):
        ref = world.referrals[referral_id]
        code = world.partner_code.get(ref.partner_id, "")
        decision, application_id = sim.decision(code, referral_id)
        state = replay(grouped.get(referral_id, []), decision=decision, application_id=application_id)
        states[referral_id] = state
        consent_status = world.consents.get(ref.consent_id, ("", None))[0]
        answered = (code, referral_id) in sim.application_answered
        diffs = _referral_differences(ref, state, consent_status, answered, referral_id in retrying)
        have = db_loans.get(referral_id, {})
        for loan_id in sorted(set(state.loans) | set(have)):
            diffs += _loan_differences(loan_id, state.loans.get(loan_id), have.get(loan_id))
        if diffs:
            problems.append(f"referral {referral_id} ({code}): " + "; ".join(diffs))
    events = sum(len(v) for v in grouped.values())
    note = f"{len(judged)} referrals replayed from {events} events, {len(loans)} loans compared"
    return _finding("replay", problems, note), Replayed(states, loans)


# --- 6. settlement ------------------------------------------------------------------------------------------
def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def period_of(moment: datetime.datetime | datetime.date) -> str:
    if isinstance(moment, datetime.datetime):
        moment = moment.astimezone(SHANGHAI)
    return f"{moment.year:04d}-{moment.month:02d}"


@dataclass(frozen=True)
class Terms:
    """A contract version's money terms, read from its JSON as settlement-rules.md names them."""

    tiers: tuple[tuple[int, Decimal], ...]
    approval_fee: Decimal
    disbursement_rate: Decimal
    interest_share_rate: Decimal
    vat_rate: Decimal
    fpd_days: int
    duplicate_return_hours: int
    reclaim_fee: Decimal

    @classmethod
    def read(cls, fees: dict, clawback: dict, reclaim: dict) -> Terms:
        fees, clawback, reclaim = fees or {}, clawback or {}, reclaim or {}
        base = Decimal(str(fees.get("application_fee") or "0"))
        more = [(int(t["from_count"]), Decimal(str(t["fee"]))) for t in fees.get("application_fee_tiers") or []]
        return cls(
            tiers=((1, base), *sorted(t for t in more if t[0] > 1)),
            approval_fee=Decimal(str(fees.get("approval_fee") or "0")),
            disbursement_rate=Decimal(str(fees.get("disbursement_rate") or "0")),
            interest_share_rate=Decimal(str(fees.get("interest_share_rate") or "0")),
            vat_rate=Decimal(str(fees.get("vat_rate") or "0")),
            fpd_days=int(clawback.get("fpd_days") or 0),
            duplicate_return_hours=int(clawback.get("duplicate_return_hours") or 0),
            reclaim_fee=Decimal(str(reclaim.get("fee") or "0")),
        )

    def application_fee(self, n: int) -> Decimal:
        """The tier with the largest ``from_count ≤ n``."""
        return [fee for start, fee in self.tiers if start <= n][-1]


class Line(NamedTuple):
    partner_id: int
    period: str
    line_type: str
    referral_id: str
    loan_pk: int | None
    amount: Decimal
    vat_rate: Decimal


def recompute(world: World, sim: Sim, replayed: Replayed) -> list[Line]:
    """settlement-rules.md as a plain loop over the replayed events — and, where only Spillway can
    know, the moment it read a synchronous acceptance and the reclaims the partner acknowledged."""
    terms = {
        pk: Terms.read(fees, clawback, reclaim)
        for pk, fees, clawback, reclaim in Contract.objects.values_list("pk", "fees", "clawback", "reclaim")
    }
    lines: list[Line] = []

    def add(ref: Ref, line_type: str, when, amount: Decimal, loan_pk: int | None = None) -> None:
        amount = cents(amount)
        if amount:  # a zero line is no line
            lines.append(
                Line(
                    ref.partner_id, period_of(when), line_type, ref.id, loan_pk, amount, terms[ref.contract_id].vat_rate
                )
            )

    # Acceptances: the partner accepted and Spillway made the referral submitted. An acceptance told
    # by callback takes the callback's time; one answered at once, the time Spillway read the answer.
    accepted: dict[str, datetime.datetime] = {}
    for referral_id, state in replayed.states.items():
        ref = world.referrals[referral_id]
        if state.status in (S.SUBMITTED, S.RETURNED) and ref.accepted_at is not None:
            accepted[referral_id] = state.accepted_at or ref.accepted_at
    # Tiers: numbered 1, 2, 3… per partner and month by acceptance time, ties by referral id —
    # acceptances of referrals from before the run take their numbers too.
    numbering: dict[tuple[int, str], list[tuple[datetime.datetime, uuid.UUID]]] = defaultdict(list)
    for referral_id, at in accepted.items():
        numbering[(world.referrals[referral_id].partner_id, period_of(at))].append((at, uuid.UUID(referral_id)))
    if numbering:
        first = min(period for _partner, period in numbering)
        earlier = Referral.objects.filter(
            created_at__lt=world.started_at,
            accepted_at__gte=datetime.datetime(int(first[:4]), int(first[5:]), 1, tzinfo=SHANGHAI),
        ).values_list("pk", "partner_id", "accepted_at")
        for pk, partner, at in earlier.iterator(chunk_size=5000):
            if (partner, period_of(at)) in numbering:
                numbering[(partner, period_of(at))].append((at, pk))
    charged: dict[str, Decimal] = {}
    for acceptances in numbering.values():
        for n, (_at, pk) in enumerate(sorted(acceptances), start=1):
            ref = world.referrals.get(str(pk))
            if ref is not None:
                charged[ref.id] = terms[ref.contract_id].application_fee(n)
    for referral_id, at in accepted.items():
        ref, state = world.referrals[referral_id], replayed.states[referral_id]
        add(ref, "application_fee", at, charged[referral_id])
        # Returned within the window (inclusive) of acceptance: the fee charged comes back.
        hours = terms[ref.contract_id].duplicate_return_hours
        if state.status == S.RETURNED and state.returned_at - at <= datetime.timedelta(hours=hours):
            add(ref, "clawback_returned", state.returned_at, -charged[referral_id])
    # Loans: approval once per referral (the loan approved first carries it), disbursement once per
    # loan, interest share per repayment by its paid date, FPD once per loan at the first report of
    # instalment 1 that reaches the contract's days: minus that loan's disbursement and approval fees.
    for referral_id, state in replayed.states.items():
        ref = world.referrals[referral_id]
        t = terms[ref.contract_id]
        pks = {
            loan_id: found.pk if (found := replayed.loans.get((ref.partner_id, loan_id))) else None
            for loan_id in state.loans
        }
        approved = sorted(
            (loan.approved_at, pks[loan.loan_id] or 0, loan.loan_id)
            for loan in state.loans.values()
            if loan.approved_at
        )
        carrier = approved[0][2] if approved else None
        if approved:
            add(ref, "approval_fee", approved[0][0], t.approval_fee, pks[carrier])
        for loan in state.loans.values():
            pk = pks[loan.loan_id]
            disbursement = cents(loan.principal * t.disbursement_rate) if loan.principal is not None else Decimal(0)
            if loan.disbursed_at is not None:
                add(ref, "disbursement_fee", loan.disbursed_at, disbursement, pk)
            for _principal, interest, paid in loan.repayments.values():
                add(ref, "interest_share", paid, interest * t.interest_share_rate, pk)
            reaching = sorted(at for (inst, dpd), at in loan.overdues.items() if inst == 1 and dpd >= t.fpd_days)
            if reaching:
                approval = t.approval_fee if loan.loan_id == carrier else Decimal(0)
                add(ref, "clawback_fpd", reaching[0], -(disbursement + approval), pk)
    # A reclaim the partner acknowledged (its answer read by Spillway): Spillway owes the reclaim fee.
    reclaims = Reclaim.objects.filter(referral__created_at__gte=world.started_at, acknowledged_at__isnull=False)
    for reclaim_id, referral_id, loan_pk, at in reclaims.values_list("pk", "referral_id", "loan_id", "acknowledged_at"):
        if str(reclaim_id) in sim.reclaims_acknowledged:
            ref = world.referrals[str(referral_id)]
            add(ref, "reclaim_fee", at, -terms[ref.contract_id].reclaim_fee, loan_pk)
    return lines


def _db_periods(world: World, replayed: Replayed) -> set[str]:
    """Every month the database has an event of the run in (so the engine runs where it might
    charge something the recomputation does not)."""
    found = set()
    for ref in world.referrals.values():
        found.update(period_of(at) for at in (ref.accepted_at, ref.returned_at) if at)
    for loan in replayed.loans.values():
        found.update(period_of(loan.row[name]) for name in ("approved_at", "disbursed_at") if loan.row[name])
        found.update(period_of(paid) for _p, _i, paid in loan.repayments.values())
        found.update(period_of(at) for at in loan.overdues.values())
    reclaims = Reclaim.objects.filter(referral__created_at__gte=world.started_at, acknowledged_at__isnull=False)
    found.update(period_of(at) for at in reclaims.values_list("acknowledged_at", flat=True))
    return found


def run_engine(periods: Iterable[str], user) -> list[str]:
    """What finance's run executes (``run_execute``: every partner, one month), for each period. The
    run is created here and executed in this process — ``run_start`` would hand it to a worker and
    refuses months that have not begun, while the simulator's loans run years ahead."""
    errors = []
    for period in sorted(periods):
        run = SettlementRun.objects.create(period=period, started_by=user)
        try:
            done = run_execute(run.pk)
        except Exception as exc:  # reported as the finding's example, the other months still run
            errors.append(f"settlement run {period}: {type(exc).__name__}: {exc}")
            continue
        if done.status != SettlementRun.Status.DONE:
            errors.append(f"settlement run {period} ended {done.status}: {done.error}")
    return errors


def _gross(groups: dict[Decimal, Decimal]) -> Decimal:
    """net + Σ over VAT-rate groups of round_half_up(group net × rate)."""
    return sum(groups.values(), Decimal("0.00")) + sum((cents(net * rate) for rate, net in groups.items()), Decimal(0))


def check_settlement(world: World, sim: Sim, replayed: Replayed, user) -> Finding:
    expected = recompute(world, sim, replayed)
    periods = {line.period for line in expected} | _db_periods(world, replayed)
    problems = run_engine(periods, user)
    engine = [
        Line(partner, period, line_type, str(referral), loan, amount, rate)
        for partner, period, line_type, referral, loan, amount, rate in StatementLine.objects.filter(
            statement__period__in=periods, referral__created_at__gte=world.started_at
        )
        .values_list(
            "statement__partner_id", "statement__period", "line_type", "referral_id", "loan_id", "amount", "vat_rate"
        )
        .iterator(chunk_size=5000)
    ]
    # The statements' totals, per partner and month, over the run's lines: engine against recomputation.
    totals: dict[tuple[int, str], list[dict[Decimal, Decimal]]] = defaultdict(
        lambda: [defaultdict(Decimal), defaultdict(Decimal)]
    )
    for side, lines in enumerate((engine, expected)):
        for line in lines:
            totals[(line.partner_id, line.period)][side][line.vat_rate] += line.amount
    difference = Decimal("0.00")
    for (partner, period), (by_engine, recomputed) in sorted(totals.items()):
        got, want = _gross(by_engine), _gross(recomputed)
        if got != want:
            difference += abs(got - want)
            problems.append(f"{world.partner_code.get(partner)} {period}: engine gross {got}, recomputation {want}")
    # And each statement's stored totals against its own lines (all of them, the run's or not).
    groups: dict[int, dict[Decimal, Decimal]] = defaultdict(dict)
    for row in (
        StatementLine.objects.filter(statement__period__in=periods)
        .values("statement_id", "vat_rate")
        .annotate(net=Sum("amount"))
        .order_by()
    ):
        groups[row["statement_id"]][row["vat_rate"]] = row["net"]
    for pk, partner, period, net, vat, gross in Statement.objects.filter(period__in=periods).values_list(
        "pk", "partner_id", "period", "net", "vat", "gross"
    ):
        mine = groups.get(pk, {})
        want_net = sum(mine.values(), Decimal("0.00"))
        if (net, gross) != (want_net, _gross(mine)) or gross != net + vat:
            difference += abs(gross - _gross(mine))
            problems.append(
                f"statement {world.partner_code.get(partner)} {period}: stored {net}/{vat}/{gross}, lines {want_net}"
            )
    key = lambda line: line[:6]  # noqa: E731 - everything but the VAT rate
    only_engine = Counter(map(key, engine)) - Counter(map(key, expected))
    only_ours = Counter(map(key, expected)) - Counter(map(key, engine))
    for side, extra in (("engine only", only_engine), ("recomputation only", only_ours)):
        for (partner, period, line_type, referral, loan, amount), n in sorted(extra.items(), key=str):
            problems.append(
                f"{side}: {world.partner_code.get(partner)} {period} {line_type} {amount} referral {referral}"
                + (f" loan {loan}" if loan else "") + (f" ×{n}" if n > 1 else "")
            )  # fmt: skip
    note = f"{len(periods)} months run; {len(engine)} engine lines, {len(expected)} recomputed"
    finding = _finding("settlement difference", problems, note)
    finding.count = f"{cents(difference):.2f}"
    return finding


# --- 7. ledger -----------------------------------------------------------------------------------------------
def check_ledger() -> Finding:
    report = ledger_verify()
    note = f"{report.consents} consents, {report.events} events, {report.checkpoints} checkpoints verified"
    return _finding("ledger", list(report.problems), note)


# --- all of them ---------------------------------------------------------------------------------------------
def settlement_user():
    """Who the settlement runs are recorded as started by."""
    from django.contrib.auth import get_user_model

    user, _created = get_user_model().objects.get_or_create(username="chaos-checks", defaults={"is_active": False})
    return user


def _guarded(name: str, check: Callable[[], Finding]) -> Finding:
    """A check that crashes is a failed invariant with its error, not the end of the report."""
    try:
        return check()
    except Exception as exc:
        where = traceback.format_exc().strip().splitlines()[-3:-1]
        return Finding(name, "error", False, [f"{type(exc).__name__}: {exc}", *where])


def check_all(
    records: dict,
    withdrawals: dict[str, float],
    *,
    started_at: datetime.datetime,
    frozen_at: datetime.datetime | None = None,
    user=None,
) -> list[Finding]:
    """Every invariant of issue 8, judged on the referrals created since ``started_at``.

    ``records``: ``GET <simulator>/_sim/records``; ``withdrawals``: consent id → ``time.time()`` when
    ``POST /api/v1/consents/{id}/withdraw/`` returned to the caller; ``user``: who the settlement
    runs are recorded as started by (default: a ``chaos-checks`` user, created inactive);
    ``frozen_at``: when the harness stopped beat before reading the records — a retry that fell due
    after it waits for the sweeper that no longer runs, and is waiting, not lost."""
    sim = Sim(records)
    world = World.load(started_at, frozen_at)
    withdrawals = {str(k): float(v) for k, v in (withdrawals or {}).items()}
    findings = [
        _guarded("lost", lambda: check_lost(world, sim)),
        _guarded("duplicate applications", lambda: check_duplicates(world, sim)),
        _guarded("unconsented sends", lambda: check_unconsented(world, sim, withdrawals)),
        _guarded("bad callbacks accepted", lambda: check_bad_callbacks(world, sim)),
    ]
    replayed: list[Replayed] = []

    def replay_check() -> Finding:
        finding, result = check_replay(world, sim)
        replayed.append(result)
        return finding

    findings.append(_guarded("replay", replay_check))
    if replayed:
        who = user or settlement_user()
        findings.append(_guarded("settlement difference", lambda: check_settlement(world, sim, replayed[0], who)))
    else:
        findings.append(Finding("settlement difference", "error", False, ["the replay failed: nothing to settle"]))
    findings.append(_guarded("ledger", check_ledger))
    return findings
