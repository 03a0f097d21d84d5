"""A partner lender on loopback that speaks protocol v1, for development, demos and tests.

One process serves any number of partners: ``/<segment>/probe``, ``/<segment>/applications``,
``/<segment>/withdrawals`` and ``/<segment>/reclaims``, where ``<segment>`` is the last path
segment of a ``Partner.api_base_url`` (``http://127.0.0.1:9100/yunfan_cf`` → ``yunfan_cf``). Each
partner's ``api_secret`` comes from the database, so the simulator checks our signatures exactly as
the real partner would, and answers per ``partner-protocol.md``.

Decisions are pseudo-random but reproducible: a decision is a function of the seed, the partner and
the referral id, so the same referral gets the same answer in every run with the same ``--seed``
(whatever order the requests arrive in). Faults — timeouts (some *after* the request was processed),
5xx, 429 — are drawn the same way per idempotency key (or referral) and attempt number; downtime
windows answer 503 (or drop the connection) for one partner for a while.

Every request is recorded for verification (:meth:`PartnerSimulator.records`, ``GET /_sim/records``)
and accepted applications live on as signed callbacks to Spillway (``partners/simulator_callbacks.py``).
State is kept in memory only and holds no personal data: the simulator remembers ids and which
applicant *fields* arrived, never their values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.db import connections

from partners import signing
from partners.simulator_callbacks import CallbackConfig, CallbackScheduler

log = logging.getLogger("partners.simulator")

ACTIONS = ("probe", "applications", "withdrawals", "reclaims")
KINDS = {"probe": "probe", "applications": "application", "withdrawals": "withdrawal", "reclaims": "reclaim"}
MAX_BODY_BYTES = 1024 * 1024

# Sending any of these to a partner breaks the central bank's rule against platforms passing credit
# information to lenders (partner-protocol.md); a conforming partner refuses the request.
CREDIT_FIELDS = frozenset({"credit_grade", "decline_reasons", "score", "internal_score", "risk_score"})
# A probe carries hashes only (撞库): clear personal data in it is a protocol violation.
CLEAR_PERSONAL_FIELDS = frozenset({"phone", "name", "national_id", "id_number", "mobile"})
HASH_HEX_LENGTH = {"hmac_sha256": 64, "sha256": 64, "md5": 32}

PROBE_DECLINE_REASONS = ("risk_model", "existing_customer", "outside_appetite")
APPLICATION_REJECT_REASONS = ("risk_model", "income_unverified", "multi_lending")


@dataclass(frozen=True)
class DowntimeWindow:
    """One partner answers nothing useful from ``start_s`` for ``duration_s`` (relative to start)."""

    partner_code: str
    start_s: float
    duration_s: float

    @classmethod
    def parse(cls, text: str) -> DowntimeWindow:
        """``PARTNER_CODE:start_s:duration_s``, as ``--down`` takes it."""
        code, sep, rest = text.rpartition(":")
        code, sep2, start = code.rpartition(":")
        try:
            window = cls(code.strip(), float(start), float(rest))
        except ValueError:
            window = None
        if not (sep and sep2 and window and window.partner_code) or window.start_s < 0 or window.duration_s <= 0:
            raise ValueError(f"a downtime window is PARTNER_CODE:start_s:duration_s, not {text!r}")
        return window


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated partners behave during one run."""

    probe_accept_rate: float = 0.7
    application_accept_rate: float = 0.6
    application_pending_rate: float = 0.0
    latency_ms: int = 0
    error_rate: float = 0.0  # answered 500/502/503, nothing processed
    throttle_rate: float = 0.0  # answered 429, nothing processed
    timeout_rate: float = 0.0  # held for timeout_hold_ms, past the caller's timeout
    timeout_after_accept_rate: float = 0.5  # of timeouts: the request was processed before the hold
    timeout_hold_ms: int = 5000
    downtime: tuple[DowntimeWindow, ...] = ()
    down_mode: str = "503"  # "503", or "drop": close the connection without an answer
    seed: int | None = None
    refresh_seconds: float = 30.0
    tolerance_seconds: int = signing.DEFAULT_TOLERANCE_SECONDS
    max_records: int = 200_000  # the oldest request records are dropped beyond this (long demo runs)
    callbacks: CallbackConfig | None = None  # None: the partners never call back

    def __post_init__(self) -> None:
        rates = ("probe_accept_rate", "application_accept_rate", "application_pending_rate", "error_rate")
        for name in (*rates, "throttle_rate", "timeout_rate", "timeout_after_accept_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.error_rate + self.throttle_rate + self.timeout_rate > 1.0:
            raise ValueError("error_rate + throttle_rate + timeout_rate must not exceed 1")
        if self.latency_ms < 0 or self.timeout_hold_ms < 0:
            raise ValueError("latency_ms and timeout_hold_ms must not be negative")
        if self.refresh_seconds <= 0 or self.max_records < 1:
            raise ValueError("refresh_seconds and max_records must be positive")
        if self.down_mode not in ("503", "drop"):
            raise ValueError(f"down_mode must be 503 or drop, not {self.down_mode!r}")


@dataclass(frozen=True)
class PartnerCredentials:
    """What the simulator knows of one partner: its code, URL segment, secret and phone hash."""

    code: str
    segment: str
    secret: str
    phone_hash: str


def url_segment(api_base_url: str) -> str:
    """The last path segment of a partner's base URL, lowercased (``""`` if there is none)."""
    return urlsplit(api_base_url or "").path.rstrip("/").rsplit("/", 1)[-1].lower()


def load_partner_credentials() -> dict[str, PartnerCredentials]:
    """Every partner the simulator can stand in for, keyed by URL segment.

    When two partners share a segment (say, the same path on different hosts), the one whose code
    matches the segment wins, else the first by code; the other is logged and not served.
    """
    from partners.models import Partner

    found: dict[str, PartnerCredentials] = {}
    for partner in Partner.objects.only("code", "api_base_url", "api_secret", "phone_hash").order_by("code"):
        segment = url_segment(partner.api_base_url)
        if not segment or not partner.api_secret:
            continue
        creds = PartnerCredentials(partner.code, segment, partner.api_secret, partner.phone_hash)
        current = found.get(segment)
        if current is None:
            found[segment] = creds
            continue
        if partner.code.lower() == segment and current.code.lower() != segment:
            found[segment] = creds
        log.warning(
            "simulator: /%s/ is the URL of both %s and %s; serving %s",
            segment,
            current.code,
            partner.code,
            found[segment].code,
        )
    return found


class CredentialStore:
    """Partner secrets by URL segment, reloaded from the database every ``refresh_seconds``.

    A miss (a partner added since the last load) or a wrong signature (a rotated secret) triggers
    an early reload, at most once per ``min_reload_seconds`` so a stream of bad requests cannot
    hammer the database.
    """

    def __init__(
        self,
        *,
        refresh_seconds: float = 30.0,
        min_reload_seconds: float = 1.0,
        loader: Callable[[], dict[str, PartnerCredentials]] = load_partner_credentials,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._refresh_seconds = refresh_seconds
        self._min_reload_seconds = min_reload_seconds
        self._loader = loader
        self._clock = clock
        self._lock = threading.Lock()
        self._by_segment: dict[str, PartnerCredentials] = {}
        self._loaded_at: float | None = None

    def reload(self) -> dict[str, PartnerCredentials]:
        """Load from the database now."""
        loaded = self._loader()
        with self._lock:
            self._by_segment = loaded
            self._loaded_at = self._clock()
        log.info("simulator: serving %d partner(s): %s", len(loaded), ", ".join(sorted(loaded)) or "none")
        return loaded

    def _age(self) -> float:
        return float("inf") if self._loaded_at is None else self._clock() - self._loaded_at

    def get(self, segment: str, *, stale_ok: bool = True) -> PartnerCredentials | None:
        """The credentials for ``segment``; ``stale_ok=False`` asks for a reload if allowed."""
        age = self._age()
        missing = segment not in self._by_segment
        if age >= self._refresh_seconds or ((missing or not stale_ok) and age >= self._min_reload_seconds):
            self.reload()
        return self._by_segment.get(segment)

    def cached(self, segment: str) -> PartnerCredentials | None:
        """The loaded credentials, never touching the database (for the callback senders)."""
        return self._by_segment.get(segment)

    def segments(self) -> list[str]:
        return sorted(self._by_segment)


@dataclass
class RequestRecord:
    """One request a simulated partner received and what it answered: ids and field names only."""

    partner: str
    kind: str  # probe | application | withdrawal | reclaim
    received_at: float  # time.time()
    idempotency_key: str | None = None
    referral_id: str | None = None
    consent_id: str | None = None
    fields: list[str] = field(default_factory=list)  # applicant field names of an application
    status: int | None = None  # None while the answer is being held (a simulated timeout)
    # answered | replayed | unauthorized | bad_request | down | error | throttled | timeout
    # (nothing processed) | timeout_after_accept (processed, then held past the caller's timeout)
    outcome: str = ""
    answer: dict[str, Any] = field(default_factory=dict)
    answered_at: float | None = None


@dataclass
class SimulatedApplication:
    """An application the simulated partner received: its answer, and no applicant data."""

    partner_code: str
    referral_id: str
    idempotency_key: str
    answer: dict[str, Any]
    fields: list[str]
    received_at: float
    consent_id: str = ""


@dataclass
class SimulatedNotice:
    """A withdrawal or reclaim notice the simulated partner acknowledged."""

    kind: str
    partner_code: str
    idempotency_key: str
    payload: dict[str, Any]
    answer: dict[str, Any]
    received_at: float


@dataclass
class SimulatorState:
    """Everything the simulated partners remember, guarded by one lock (handlers run in threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    applications: dict[tuple[str, str], SimulatedApplication] = field(default_factory=dict)
    notices: dict[tuple[str, str, str], SimulatedNotice] = field(default_factory=dict)
    records: deque[RequestRecord] = field(default_factory=deque)
    dropped_records: int = 0
    attempts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    probes: int = 0
    requests: int = 0

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "requests": self.requests,
                "probes": self.probes,
                "applications": len(self.applications),
                "withdrawals": sum(1 for key in self.notices if key[0] == "withdrawals"),
                "reclaims": sum(1 for key in self.notices if key[0] == "reclaims"),
            }


@dataclass
class SimResponse:
    """One answer: status, JSON body, and the log fields (never personal data)."""

    status: int
    body: dict[str, Any]
    partner: str = "-"
    note: str = ""
    outcome: str = "answered"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering (a partner that is down)


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PartnerSimulator:
    """Stand-in partner lenders for every partner in the database whose URL ends in a segment.

    ``handle()`` is the whole protocol logic, independent of HTTP; ``serve_forever()`` / ``start()``
    put it behind a threaded stdlib server. ``records()`` is what the partners saw (for checks
    after a chaos run); ``callbacks`` (a :class:`CallbackScheduler`, when configured) tells
    Spillway what became of each accepted application.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 9100,
        credentials: CredentialStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.seed = self.config.seed if self.config.seed is not None else secrets.randbits(32)
        self.host = host
        self.port = port
        self.credentials = credentials or CredentialStore(refresh_seconds=self.config.refresh_seconds)
        self.state = SimulatorState(records=deque(maxlen=self.config.max_records))
        self._clock = clock
        self._started = time.monotonic()  # downtime windows count from here (reset when serving starts)
        self.started_at = clock()
        self._stopping = threading.Event()
        self._httpd: _SimulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.callbacks: CallbackScheduler | None = None
        if self.config.callbacks is not None:
            self.callbacks = CallbackScheduler(
                self.config.callbacks,
                seed=self.seed,
                credentials=lambda creds: self.credentials.cached(creds.segment) or creds,
                downtime_end=self.downtime_end,
                clock=clock,
            )

    # --- decisions and faults -----------------------------------------------------------------
    def _draw(self, *parts: str) -> random.Random:
        """A generator determined by the seed and ``parts`` only (not by request order)."""
        return random.Random(":".join((str(self.seed), *parts)))  # noqa: S311 — simulation

    def downtime_end(self, partner_code: str) -> float | None:
        """The monotonic time a partner's current downtime ends, or None when it is up."""
        elapsed = time.monotonic() - self._started
        for window in self.config.downtime:
            end = window.start_s + window.duration_s
            if window.partner_code.lower() == partner_code.lower() and window.start_s <= elapsed < end:
                return self._started + end
        return None

    def _draw_fault(self, creds: PartnerCredentials, action: str, record: RequestRecord) -> tuple[str | None, bool]:
        """``(fault, after_processing)`` for this attempt: a function of the seed, the partner, the
        idempotency key (or referral) and how many times it was seen — so a retry draws afresh."""
        config = self.config
        if not (config.error_rate or config.throttle_rate or config.timeout_rate):
            return None, False
        subject = record.idempotency_key or record.referral_id or "-"
        with self.state.lock:
            attempt = self.state.attempts[(creds.segment, action, subject)]
            self.state.attempts[(creds.segment, action, subject)] += 1
        draw = self._draw(creds.segment, action, subject, "fault", str(attempt))
        roll = draw.random()
        if roll < config.timeout_rate:
            return "timeout", draw.random() < config.timeout_after_accept_rate
        if roll < config.timeout_rate + config.error_rate:
            return f"error:{draw.choice((500, 500, 502, 503))}", False
        if roll < config.timeout_rate + config.error_rate + config.throttle_rate:
            return "throttle", False
        return None, False

    def _hold(self) -> None:
        """Keep the caller waiting past its timeout (cut short when the simulator stops)."""
        self._stopping.wait(self.config.timeout_hold_ms / 1000)

    # --- the protocol -------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: Any, body: bytes) -> SimResponse:
        """Answer one request as the partner at ``/<segment>/<action>`` would, and record it."""
        with self.state.lock:
            self.state.requests += 1
        url = urlsplit(path)
        parts = [part for part in url.path.split("/") if part]
        if method == "GET" and not parts:
            return SimResponse(
                HTTPStatus.OK,
                {
                    "status": "ok",
                    "partners": self.credentials.segments(),
                    **self.state.counts(),
                    "callbacks_pending": self.callbacks.pending() if self.callbacks else 0,
                },
            )
        if method == "GET" and parts == ["_sim", "records"]:
            return SimResponse(HTTPStatus.OK, self.records(parse_qs(url.query).get("partner", [None])[0]))
        if len(parts) != 2 or parts[1] not in ACTIONS:
            return SimResponse(HTTPStatus.NOT_FOUND, {"error": "unknown endpoint"})
        if method != "POST":
            return SimResponse(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use POST"})
        segment, action = parts[0].lower(), parts[1]
        creds = self.credentials.get(segment)
        if creds is None:
            return SimResponse(HTTPStatus.NOT_FOUND, {"error": "unknown partner"})
        record = RequestRecord(creds.code, KINDS[action], self._clock(), _header(headers, "Idempotency-Key"))
        with self.state.lock:
            if len(self.state.records) == self.state.records.maxlen:
                self.state.dropped_records += 1
            self.state.records.append(record)
        response = self._answer(creds, action, headers, body, record)
        response.partner = creds.code
        with self.state.lock:
            record.status, record.outcome, record.answered_at = response.status, response.outcome, self._clock()
            record.answer = dict(response.body)
        return response

    def _answer(
        self, creds: PartnerCredentials, action: str, headers: Any, body: bytes, record: RequestRecord
    ) -> SimResponse:
        # Whatever arrives is recorded by its ids first — also when it is then refused (down, bad
        # signature): the data reached the partner, and a check of what was sent must see it.
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            with self.state.lock:  # records() may be reading it
                _describe(record, payload)
        down_until = self.downtime_end(creds.code)
        if down_until is not None:  # down: nothing is checked, nothing is processed
            retry_after = str(max(1, round(down_until - time.monotonic())))
            return SimResponse(
                HTTPStatus.SERVICE_UNAVAILABLE, {"error": "partner down for maintenance"}, note="down",
                outcome="down", headers={"Retry-After": retry_after}, drop=self.config.down_mode == "drop",
            )  # fmt: skip
        try:
            self._verify(creds, headers, body)
        except signing.SignatureError as exc:
            return SimResponse(
                HTTPStatus.UNAUTHORIZED, {"error": f"signature {exc.reason}"}, note=f"auth={exc.reason}",
                outcome="unauthorized",
            )  # fmt: skip
        fault, after_processing = self._draw_fault(creds, action, record)
        if self.config.latency_ms:
            time.sleep(self.config.latency_ms / 1000)
        if fault is not None and fault.startswith("error:"):
            status = int(fault.split(":")[1])
            return SimResponse(status, {"error": "simulated partner failure"}, note="fault", outcome="error")
        if fault == "throttle":
            return SimResponse(
                HTTPStatus.TOO_MANY_REQUESTS, {"error": "rate limit exceeded"}, note="fault", outcome="throttled",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        if fault == "timeout" and not after_processing:
            self._hold()
            return SimResponse(
                HTTPStatus.GATEWAY_TIMEOUT, {"error": "simulated timeout"}, note="fault", outcome="timeout"
            )
        try:
            if not isinstance(payload, dict):
                raise _BadRequest("body must be a JSON object" if payload is not None else "body is not valid JSON")
            response = getattr(self, f"_{action}")(creds, payload, record.idempotency_key)
        except _BadRequest as exc:
            response = SimResponse(
                HTTPStatus.BAD_REQUEST, {"error": exc.message}, note="bad-request", outcome="bad_request"
            )
        if fault == "timeout":
            # The partner did the work (an application stored, a notice acknowledged) but the caller
            # gives up before the answer: its retry with the same Idempotency-Key must get a replay.
            self._hold()
            response.outcome = "timeout_after_accept"
        return response

    def _verify(self, creds: PartnerCredentials, headers: Any, body: bytes) -> None:
        try:
            signing.verify(creds.secret, headers, body, now=self._clock(), tolerance=self.config.tolerance_seconds)
        except signing.SignatureError as exc:
            if exc.reason != "wrong":
                raise
            # The secret may have been rotated since the last load: reload once, then decide.
            fresh = self.credentials.get(creds.segment, stale_ok=False)
            if fresh is None or fresh.secret == creds.secret:
                raise
            signing.verify(fresh.secret, headers, body, now=self._clock(), tolerance=self.config.tolerance_seconds)

    def _probe(self, creds: PartnerCredentials, payload: dict[str, Any], key: str | None) -> SimResponse:
        referral_id = _required_str(payload, "referral_id")
        leaked = sorted((CLEAR_PERSONAL_FIELDS | CREDIT_FIELDS) & set(payload))
        if leaked:
            raise _BadRequest(f"a probe carries hashes only; remove {', '.join(leaked)}")
        alg = _required_str(payload, "hash_alg")
        if alg != creds.phone_hash:
            raise _BadRequest(f"hash_alg must be {creds.phone_hash} for this partner")
        digest = _required_str(payload, "phone_hash")
        if len(digest) != HASH_HEX_LENGTH.get(alg, -1) or any(c not in "0123456789abcdef" for c in digest):
            raise _BadRequest(f"phone_hash must be lowercase hex of a {alg} digest")
        with self.state.lock:
            self.state.probes += 1
        draw = self._draw(creds.segment, "probe", referral_id)
        if draw.random() < self.config.probe_accept_rate:
            answer = {"decision": "accept", "reason": "within_appetite"}
        else:
            answer = {"decision": "decline", "reason": draw.choice(PROBE_DECLINE_REASONS)}
        return SimResponse(HTTPStatus.OK, answer, note=f"referral={referral_id} decision={answer['decision']}")

    def _applications(self, creds: PartnerCredentials, payload: dict[str, Any], key: str | None) -> SimResponse:
        if not key:
            raise _BadRequest("Idempotency-Key header is required")
        with self.state.lock:
            stored = self.state.applications.get((creds.segment, key))
        if stored is not None:
            return self._replay(stored.answer, key)
        referral_id = _required_str(payload, "referral_id")
        if key != referral_id:
            raise _BadRequest("Idempotency-Key must be the referral_id")
        applicant = payload.get("applicant")
        if not isinstance(applicant, dict) or not applicant:
            raise _BadRequest("applicant must be a non-empty object")
        credit = sorted(CREDIT_FIELDS & set(applicant))
        if credit:
            raise _BadRequest(f"credit data must never be sent to a partner: {', '.join(credit)}")
        consent = payload.get("consent")
        if not isinstance(consent, dict) or not consent.get("id"):
            raise _BadRequest("consent.id is required")

        draw = self._draw(creds.segment, "application", referral_id)
        application_id = (
            "SIM-" + hashlib.sha256(f"{self.seed}:{creds.segment}:{referral_id}".encode()).hexdigest()[:16].upper()
        )
        if draw.random() < self.config.application_pending_rate:
            answer = {"application_id": application_id, "decision": "pending", "reason": "manual_review"}
        elif draw.random() < self.config.application_accept_rate:
            answer = {"application_id": application_id, "decision": "accepted", "reason": "approved_by_model"}
        else:
            answer = {
                "application_id": application_id,
                "decision": "rejected",
                "reason": draw.choice(APPLICATION_REJECT_REASONS),
            }
        application = SimulatedApplication(
            creds.code, referral_id, key, answer, sorted(applicant), self._clock(), str(consent["id"])
        )
        with self.state.lock:
            # Two concurrent first deliveries: whichever stored first wins, the other replays it.
            stored = self.state.applications.setdefault((creds.segment, key), application)
        if stored is not application:
            return self._replay(stored.answer, key)
        if self.callbacks is not None and answer["decision"] != "rejected":
            later = None
            if answer["decision"] == "pending":
                later = "accepted" if draw.random() < self.config.application_accept_rate else "rejected"
            self.callbacks.application_created(
                creds, referral_id, application_id, answer["decision"], later_decision=later,
                # Loan size only: the simulator keeps the loan's amounts, not the applicant's data.
                requested_amount=applicant.get("requested_amount"),
                requested_term_months=applicant.get("requested_term_months"),
            )  # fmt: skip
        return SimResponse(HTTPStatus.OK, answer, note=f"referral={referral_id} decision={answer['decision']}")

    def _notice(
        self, kind: str, creds: PartnerCredentials, payload: dict[str, Any], key: str | None, expected_key: str
    ) -> SimResponse:
        if not key:
            raise _BadRequest("Idempotency-Key header is required")
        if key != expected_key:
            raise _BadRequest(f"Idempotency-Key must be {expected_key}")
        answer = {"acknowledged": True}
        notice = SimulatedNotice(kind, creds.code, key, payload, answer, self._clock())
        with self.state.lock:
            stored = self.state.notices.setdefault((kind, creds.segment, key), notice)
        if stored is not notice:
            return self._replay(stored.answer, key)
        if kind == "withdrawals" and self.callbacks is not None:
            self.callbacks.referral_withdrawn(creds.code, str(payload["referral_id"]))
        return SimResponse(HTTPStatus.OK, answer, note=f"{kind}={key}")

    def _withdrawals(self, creds: PartnerCredentials, payload: dict[str, Any], key: str | None) -> SimResponse:
        consent_id = _required_str(payload, "consent_id")
        _required_str(payload, "referral_id")
        _required_str(payload, "withdrawn_at")
        return self._notice("withdrawals", creds, payload, key, f"{consent_id}:{creds.code}")

    def _reclaims(self, creds: PartnerCredentials, payload: dict[str, Any], key: str | None) -> SimResponse:
        reclaim_id = _required_str(payload, "reclaim_id")
        for name in ("referral_id", "loan_id", "effective_date"):
            _required_str(payload, name)
        return self._notice("reclaims", creds, payload, key, reclaim_id)

    @staticmethod
    def _replay(answer: dict[str, Any], key: str) -> SimResponse:
        return SimResponse(HTTPStatus.OK, dict(answer), note=f"replay key={key}", outcome="replayed")

    # --- records ------------------------------------------------------------------------------
    def applications_for(self, partner_code: str) -> list[SimulatedApplication]:
        with self.state.lock:
            return [app for app in self.state.applications.values() if app.partner_code == partner_code]

    def requests_received(self, partner_code: str | None = None, kind: str | None = None) -> list[RequestRecord]:
        """Copies of the request records, oldest first (``kind``: probe, application, ...)."""
        with self.state.lock:
            return [
                RequestRecord(**asdict(record))
                for record in self.state.records
                if (partner_code is None or record.partner == partner_code) and (kind is None or record.kind == kind)
            ]

    def records(self, partner_code: str | None = None) -> dict[str, Any]:
        """Everything the partners saw and sent, per partner code, as JSON-ready data.

        ``requests``: every request with its kind, ids, Idempotency-Key, received time, status,
        outcome and answer; ``applications``: the distinct applications stored, per referral;
        ``withdrawals``: the withdrawal notices acknowledged; ``callbacks``: each event sent back
        to Spillway with its deliveries and the status each got.
        """
        wanted = partner_code.lower() if partner_code else None
        partners: dict[str, dict[str, Any]] = {}

        def entry(code: str) -> dict[str, Any] | None:
            if wanted is not None and code.lower() != wanted:
                return None
            return partners.setdefault(code, {"requests": [], "applications": {}, "withdrawals": [], "callbacks": []})

        with self.state.lock:
            for record in self.state.records:
                if (into := entry(record.partner)) is not None:
                    into["requests"].append(asdict(record))
            for app in self.state.applications.values():
                if (into := entry(app.partner_code)) is not None:
                    into["applications"].setdefault(app.referral_id, []).append(
                        {
                            "application_id": app.answer.get("application_id"), "decision": app.answer.get("decision"),
                            "idempotency_key": app.idempotency_key, "consent_id": app.consent_id,
                            "fields": list(app.fields), "received_at": app.received_at,
                        }
                    )  # fmt: skip
            for notice in self.state.notices.values():
                if notice.kind == "withdrawals" and (into := entry(notice.partner_code)) is not None:
                    ids = {name: notice.payload.get(name) for name in ("consent_id", "referral_id")}
                    into["withdrawals"].append(
                        {**ids, "idempotency_key": notice.idempotency_key, "received_at": notice.received_at}
                    )
            dropped = self.state.dropped_records
        for event in self.callbacks.records() if self.callbacks else []:
            if (into := entry(event["partner"])) is not None:
                into["callbacks"].append(event)
        return {"seed": self.seed, "started_at": self.started_at, "dropped_requests": dropped, "partners": partners}

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed, **asdict(self.config)}

    # --- serving ------------------------------------------------------------------------------
    def bind(self) -> _SimulatorHTTPServer:
        """Open the listening socket (``port=0`` picks a free one; see :attr:`url`)."""
        if self._httpd is None:
            self._httpd = _SimulatorHTTPServer((self.host, self.port), _Handler, simulator=self)
            self.port = self._httpd.server_address[1]
        return self._httpd

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _begin(self) -> None:
        self._started, self.started_at = time.monotonic(), self._clock()
        if self.callbacks is not None:
            self.callbacks.start()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`stop` (from another thread) or an interrupt; ``poll_interval`` bounds
        how long a stop takes."""
        httpd = self.bind()
        if self._thread is None:
            self._begin()
        httpd.serve_forever(poll_interval=poll_interval)

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (tests); stop with :meth:`stop`."""
        self.bind()
        self._begin()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="partner-simulator", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stopping.set()  # releases requests held by a simulated timeout
        if self.callbacks is not None:
            self.callbacks.stop()
        if self._httpd is not None:
            if self._thread is not None:
                self._httpd.shutdown()
                self._thread.join(timeout=5)
            self._httpd.server_close()
            self._httpd = None


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _describe(record: RequestRecord, payload: dict[str, Any]) -> None:
    """Copy a request's ids and applicant field *names* into its record (never a value)."""
    for name in ("referral_id", "consent_id"):
        if isinstance(payload.get(name), str):
            setattr(record, name, payload[name])
    consent, applicant = payload.get("consent"), payload.get("applicant")
    if isinstance(consent, dict) and isinstance(consent.get("id"), str):
        record.consent_id = consent["id"]
    if isinstance(applicant, dict):
        record.fields = sorted(str(name) for name in applicant)


def _required_str(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _BadRequest(f"{name} is required")
    return value


class _SimulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, simulator: PartnerSimulator):
        self.simulator = simulator
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    # Without TCP_NODELAY the stdlib server adds ~40 ms per response through delayed ACKs
    # (perf-notes.md), which would make every latency figure measured against it wrong.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "SpillwayPartnerSimulator/1"
    server: _SimulatorHTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        started = time.perf_counter()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            response = SimResponse(HTTPStatus.BAD_REQUEST, {"error": "missing or too large Content-Length"})
            self.close_connection = True
        else:
            body = self.rfile.read(length) if length else b""
            try:
                response = self.server.simulator.handle(self.command, self.path, self.headers, body)
            except Exception:
                log.exception("simulator: error handling %s %s", self.command, urlsplit(self.path).path)
                response = SimResponse(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "simulator bug"})
            finally:
                # Each handler thread opened its own database connection (if it reloaded secrets).
                connections.close_all()
        if response.drop:
            self.close_connection = True  # the caller sees the connection closed, no answer
        else:
            self._send(response)
        elapsed = (time.perf_counter() - started) * 1000
        level = logging.INFO if response.status < 400 else logging.WARNING
        # One line per request: path, partner, status, referral/decision — ids only, no personal data.
        log.log(
            level,
            "simulator: %s %s partner=%s status=%d %s %.1fms",
            self.command,
            urlsplit(self.path).path,
            response.partner,
            response.status,
            response.note or "-",
            elapsed,
        )

    def _send(self, response: SimResponse) -> None:
        data = json.dumps(response.body, ensure_ascii=False).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The caller gave up (a simulated timeout held past its deadline): expected, not an error.
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib's access log; :meth:`_dispatch` logs one line per request."""
