"""Synthetic data at scale: applicants with consents and their ledger, referrals in every status,
loans with monthly repayments, 20 partners — loaded with PostgreSQL's COPY.

    python -m bench.generate --applicants 1000000          # the full scale (a few minutes)
    python -m bench.generate --applicants 2000              # smoke

Everything goes through the same columns the app writes: personal data sealed with the app's own
encryption (``config.crypto``), blind indexes, ledger events hash-chained per consent exactly as
``referrals.services.ledger`` does (so ``verify_ledger`` passes over them), loans and repayments
tied to stored callback events (so a settlement run prices them). Partners, contracts, users and
the consent text go through the real services. Deterministic for a given ``--seed``.

Shapes per applicant (averages): one consent naming three partners, one referral (to the first
partner) whose status follows a realistic funnel, ~4.7 ledger events, and for ~20 % a disbursed
loan repaying monthly over the last ``--months`` months (one callback event per repayment).
"""

from __future__ import annotations

import argparse
import datetime
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import django

PARTNERS = 20
CHUNK = 5_000
# The referral funnel: (status, share). Submitted referrals may become loans.
FUNNEL = (
    ("submitted", 0.55), ("probe_declined", 0.15), ("rejected", 0.08), ("not_selected", 0.05),
    ("cancelled", 0.05), ("failed", 0.03), ("returned", 0.02), ("queued", 0.02), ("probing", 0.02),
    ("probe_accepted", 0.02), ("submitting", 0.01),
)  # fmt: skip
LOAN_SHARE_OF_SUBMITTED = 0.36  # ≈ 20 % of applicants
WITHDRAWN_SHARE = 0.05
EXPIRED_SHARE = 0.10
NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄勇", "周杰", "吴霞", "欧阳娜娜"]
REGIONS = ["110105", "310101", "440305", "330106", "510107", "420102", "320102", "610113"]


@dataclass
class Stats:
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, table: str, n: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + n

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _setup_django() -> None:
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()


# --- the cast: users, consent text, partners with approved contracts (real services) -----------
def cast(partners: int = PARTNERS):
    from django.contrib.auth.models import Group, User

    from partners.models import Partner
    from tests.factories import PartnerFactory, consent_text, make_contract

    def user(name: str, role: str, staff: bool = True) -> User:
        u, _ = User.objects.get_or_create(username=name, defaults={"is_staff": staff})
        u.groups.add(Group.objects.get(name=role))
        return u

    origination = user("bench-origination", "origination", staff=False)
    drafter = user("bench-partnerships", "partnership_manager")
    approver = user("bench-compliance", "compliance_officer")
    text = consent_text(actor=approver, code="bench-consent-v1", validity_days=3650)
    rows = []
    for n in range(partners):
        code = f"BENCH_P{n:02d}"
        partner = Partner.objects.filter(code=code).first()
        if partner is None:
            partner = PartnerFactory(
                code=code, name=f"基准测试合作机构{n:02d}", api_base_url=f"http://127.0.0.1:9100/{code.lower()}"
            )
            make_contract(
                partner,
                drafter=drafter,
                approver=approver,
                effective_from=datetime.date(2025, 1, 1),
                daily_cap=None,
                priority=10 + n,
                reclaim={"allowed": True, "min_ontime_installments": 3, "fee": "200.00", "non_solicit_days": 0},
            )
        rows.append(partner)
    contracts = {p.pk: p.contracts.filter(status="active").order_by("-version").first() for p in rows}
    return origination, text, rows, contracts


# --- one applicant's rows ---------------------------------------------------------------------
def _national_id(rng: random.Random, i: int) -> tuple[str, datetime.date]:
    from stdnum.cn import ric

    birth = datetime.date(1966, 1, 1) + datetime.timedelta(days=rng.randrange(0, 365 * 33))
    body = f"{REGIONS[i % len(REGIONS)]}{birth:%Y%m%d}{i % 1000:03d}"
    return body + ric.calc_check_digit(body + "0"), birth


def _phone(i: int) -> str:
    return f"1{3 + i % 7}{(12345678 + i * 7919) % 10**9:09d}"


class Writer:
    """Buffers rows per table and COPYs them in chunks (PostgreSQL) — the generator's only writer."""

    COLUMNS = {
        "referrals_applicant": (
            "id", "external_id", "name", "national_id", "phone", "national_id_index", "phone_index", "birth_date",
            "province", "city", "requested_amount", "requested_term_months", "expected_apr", "monthly_income",
            "credit_grade", "decline_reasons", "declined_at", "request_sha256", "created_by_id", "created_at",
        ),
        "referrals_consent": (
            "id", "applicant_id", "text_id", "text_sha256", "data_categories", "purposes", "channel", "granted_at",
            "ip", "device_id", "evidence_sha256", "expires_at", "status", "withdrawn_at", "withdrawal_channel",
            "withdrawal_reason", "expired_at", "created_at",
        ),
        "referrals_consentrecipient": (
            "consent_id", "partner_id", "disclosed_name", "disclosed_contact_email", "disclosed_contact_phone",
        ),
        "referrals_consentevent": (
            "consent_id", "seq", "type", "occurred_at", "payload", "prev_hash", "hash", "recorded_at",
        ),
        "referrals_referral": (
            "id", "applicant_id", "consent_id", "partner_id", "contract_id", "status", "status_reason", "priority",
            "expected_fee", "application_id", "created_at", "probe_answered_at", "submitted_at", "accepted_at",
            "returned_at", "updated_at",
        ),
        "referrals_callbackevent": (
            "id", "partner_id", "event_id", "type", "referral_id", "occurred_at", "data", "body_sha256", "status",
            "note", "received_at", "processed_at",
        ),
        "referrals_loan": (
            "id", "referral_id", "partner_id", "loan_id", "status", "credit_limit", "principal", "apr", "term_months",
            "first_due_date", "approved_at", "disbursed_at", "ended_at", "created_at", "updated_at",
        ),
        "referrals_repayment": ("loan_id", "installment", "due_date", "paid_date", "principal", "interest", "event_id"),
    }  # fmt: skip
    ORDER = tuple(COLUMNS)  # parents before children

    def __init__(self, stats: Stats) -> None:
        from django.db import connection

        self.connection = connection
        self.buffers: dict[str, list[tuple]] = {table: [] for table in self.COLUMNS}
        self.stats = stats

    def add(self, table: str, row: tuple) -> None:
        self.buffers[table].append(row)

    def flush(self) -> None:
        from django.db import transaction

        with transaction.atomic(), self.connection.cursor() as cursor:
            raw = cursor.cursor  # psycopg's own cursor, for COPY
            for table in self.ORDER:
                rows = self.buffers[table]
                if not rows:
                    continue
                columns = ", ".join(self.COLUMNS[table])
                with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                self.stats.add(table, len(rows))
                rows.clear()


def _ids(start: int) -> Iterator[int]:
    n = start
    while True:
        yield n
        n += 1


def generate(*, applicants: int, months: int = 5, seed: int = 1, partners: int = PARTNERS, log=print) -> Stats:
    """Adds ``applicants`` applicants (and all that hangs off them) to the current database."""
    from django.db import connection

    from config.crypto import blind_index, encrypt
    from referrals import merkle
    from referrals.models import Applicant, CallbackEvent, Loan

    if connection.vendor != "postgresql":
        raise SystemExit("bench.generate loads with COPY: point DATABASE_URL at PostgreSQL")
    started = time.perf_counter()
    stats = Stats()
    origination, text, partner_rows, contracts = cast(partners)
    writer = Writer(stats)
    offset = Applicant.objects.filter(external_id__startswith="BENCH-").count()
    rng = random.Random(f"{seed}:{offset}")  # noqa: S311 - synthetic data, reproducible from the seed
    callback_ids = _ids((CallbackEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0) + 1)
    loan_ids = _ids((Loan.objects.order_by("-id").values_list("id", flat=True).first() or 0) + 1)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    this_month = now.date().replace(day=1)
    first_month = _add_months(this_month, -months)
    span = (now - datetime.datetime.combine(first_month, datetime.time(), datetime.UTC)).total_seconds() - 86400 * 31
    statuses, weights = zip(*FUNNEL, strict=True)
    ctx = {c: f"referrals_applicant.{c}" for c in ("name", "national_id", "phone")}

    for i in range(offset, offset + applicants):
        created = datetime.datetime.combine(first_month, datetime.time(), datetime.UTC) + datetime.timedelta(
            seconds=rng.uniform(0, max(span, 3600))
        )
        nid, birth = _national_id(rng, i)
        phone, name = _phone(i), NAMES[i % len(NAMES)]
        applicant_id, consent_id = (
            uuid.UUID(int=rng.getrandbits(128), version=4),
            uuid.UUID(int=rng.getrandbits(128), version=4),
        )
        amount = Decimal(rng.choice([5000, 10000, 20000, 50000, 80000, 100000]))
        term = rng.choice([6, 12, 24])
        writer.add("referrals_applicant", (
            applicant_id, f"BENCH-{i:08d}", encrypt(name, context=ctx["name"]),
            encrypt(nid, context=ctx["national_id"]), encrypt(phone, context=ctx["phone"]),
            blind_index(nid, purpose="national_id"), blind_index(phone, purpose="phone"), birth,
            REGIONS[i % len(REGIONS)][:2] + "0000", REGIONS[i % len(REGIONS)][:4] + "00", amount, term,
            Decimal("0.0450"), Decimal(rng.choice([6000, 9000, 12000, 20000])), rng.choice("BCD"),
            '["FUNDING_COST"]', created - datetime.timedelta(minutes=5), f"{i:064x}", origination.pk, created,
        ))  # fmt: skip

        named = [partner_rows[(i + k * 7) % len(partner_rows)] for k in range(3)]
        roll = rng.random()
        status = (
            "withdrawn"
            if roll < WITHDRAWN_SHARE
            else "expired"
            if roll < WITHDRAWN_SHARE + EXPIRED_SHARE
            else "granted"
        )
        granted_at = created - datetime.timedelta(minutes=6)
        expires_at = granted_at + datetime.timedelta(days=3650 if status != "expired" else 30)
        ended = created + datetime.timedelta(days=rng.uniform(1, 20))
        writer.add("referrals_consent", (
            consent_id, applicant_id, text.pk, text.sha256,
            '["identity","contact","location","loan_request","income"]', '["loan_referral","reclaim_offer"]',
            "app", granted_at, "10.1.2.3", "", "0" * 64, expires_at, status,
            ended if status == "withdrawn" else None, "app" if status == "withdrawn" else "", "",
            ended if status == "expired" else None, created,
        ))  # fmt: skip
        for p in named:
            writer.add("referrals_consentrecipient", (consent_id, p.pk, p.name, p.contact_email, p.contact_phone))

        # The ledger: granted, a probe to each named partner, the application, the end of the consent.
        chain = _Chain(consent_id, writer, created)
        chain.add("granted", granted_at, {
            "applicant_id": str(applicant_id), "external_id": f"BENCH-{i:08d}", "text_code": text.code,
            "text_sha256": text.sha256,
            "recipients": [{"partner": p.code, "name": p.name, "contact_email": p.contact_email,
                            "contact_phone": p.contact_phone} for p in named],
            "data_categories": ["identity", "contact", "location", "loan_request", "income"],
            "purposes": ["loan_referral", "reclaim_offer"], "channel": "app",
            "granted_at": merkle.utc_iso(granted_at), "expires_at": merkle.utc_iso(expires_at), "ip": "10.1.2.3",
            "device_id": "", "evidence_sha256": "0" * 64,
        })  # fmt: skip

        partner, contract = named[0], contracts[named[0].pk]
        referral_id = _uuid(rng)
        r_status = rng.choices(statuses, weights)[0]
        probed = r_status not in ("queued",)
        sent = r_status in ("submitted", "rejected", "returned")
        probe_at = created + datetime.timedelta(seconds=2)
        if probed:
            for p in named:
                chain.add("probe_sent", probe_at, {
                    "partner": p.code, "dispatch": 0, "attempt": 1, "referral": str(referral_id),
                    "contract": contracts[p.pk].pk, "contract_version": contracts[p.pk].version,
                    "fields": ["age", "amount", "province", "term"], "hash_alg": "sha256",
                })  # fmt: skip
        submitted_at = probe_at + datetime.timedelta(seconds=3) if sent else None
        if sent:
            chain.add("application_sent", submitted_at, {
                "partner": partner.code, "dispatch": 0, "attempt": 1, "referral": str(referral_id),
                "contract": contract.pk, "contract_version": contract.version,
                "fields": ["name", "national_id", "phone", "province", "requested_amount", "requested_term_months"],
            })  # fmt: skip
        if status != "granted":
            chain.add(status, ended, {"channel": "app"} if status == "withdrawn" else {})
        accepted_at = submitted_at + datetime.timedelta(seconds=1) if sent else None
        writer.add("referrals_referral", (
            referral_id, applicant_id, consent_id, partner.pk, contract.pk, r_status, "", contract.priority,
            Decimal("30.00"), f"APP{i:010d}" if sent else "", created,
            probe_at + datetime.timedelta(seconds=1) if probed else None, submitted_at, accepted_at,
            accepted_at + datetime.timedelta(hours=2) if r_status == "returned" else None, created,
        ))  # fmt: skip

        if r_status == "submitted" and rng.random() < LOAN_SHARE_OF_SUBMITTED:
            _loan(writer, rng, i, partner, referral_id, amount, term, accepted_at, now, callback_ids, loan_ids)

        if (i + 1) % CHUNK == 0:
            writer.flush()
            if (i + 1 - offset) % (CHUNK * 20) == 0:
                rate = stats.total / (time.perf_counter() - started)
                log(f"  {i + 1 - offset:,} applicants, {stats.total:,} rows ({rate:,.0f} rows/s)")
    writer.flush()
    with connection.cursor() as cursor:
        # COPY wrote the ids of these two itself: move their sequences past them, or the app's
        # next insert (a callback, a loan) collides with a generated row.
        for table in ("referrals_callbackevent", "referrals_loan"):
            sequence = f"pg_get_serial_sequence('{table}', 'id')"
            cursor.execute(f"SELECT setval({sequence}, (SELECT max(id) FROM {table}))")  # noqa: S608 - our names
        for table in Writer.ORDER:
            cursor.execute(f"ANALYZE {table}")
    stats.seconds = time.perf_counter() - started
    return stats


class _Chain:
    """One consent's ledger events, hash-chained as ``referrals.services.ledger`` chains them."""

    def __init__(self, consent_id, writer: Writer, recorded_at: datetime.datetime) -> None:
        from referrals import merkle

        self.consent_id, self.writer, self.recorded_at = consent_id, writer, recorded_at
        self.prev, self.seq, self.merkle = merkle.GENESIS_HASH, 0, merkle

    def add(self, type: str, at: datetime.datetime, payload: dict) -> None:
        self.seq += 1
        document = self.merkle.event_document(
            consent_id=self.consent_id, seq=self.seq, type=type, occurred_at=at, payload=payload, prev_hash=self.prev
        )
        digest = self.merkle.event_hash(document)
        self.writer.add(
            "referrals_consentevent",
            (self.consent_id, self.seq, type, at, self.merkle.canonical_json(payload).decode(), self.prev, digest,
             max(at, self.recorded_at)),
        )  # fmt: skip
        self.prev = digest


def _loan(writer, rng, i, partner, referral_id, amount, term, accepted_at, now, callback_ids, loan_ids) -> None:
    """A disbursed loan with an approval, a disbursement and one repayment per elapsed month."""
    loan_pk, loan_id = next(loan_ids), f"LN{i:010d}"
    approved_at = accepted_at + datetime.timedelta(hours=rng.uniform(1, 48))
    disbursed_at = approved_at + datetime.timedelta(hours=rng.uniform(1, 24))
    first_due = _add_months(disbursed_at.date(), 1)
    apr = Decimal("0.1800")
    writer.add("referrals_loan", (
        loan_pk, referral_id, partner.pk, loan_id, "disbursed", amount, amount, apr, term, first_due,
        approved_at, disbursed_at, None, approved_at, disbursed_at,
    ))  # fmt: skip

    def event(type: str, at: datetime.datetime, data: dict) -> int:
        pk = next(callback_ids)
        writer.add("referrals_callbackevent", (
            pk, partner.pk, f"E{pk:012d}", type, referral_id, at, _json(data), "0" * 64, "processed", "", at, at,
        ))  # fmt: skip
        return pk

    event("loan.approved", approved_at, {"loan_id": loan_id, "credit_limit": str(amount), "apr": str(apr)})
    event("loan.disbursed", disbursed_at, {"loan_id": loan_id, "principal": str(amount), "term_months": term})
    balance = amount
    principal_part = (amount / term).quantize(Decimal("0.01"))
    for n in range(1, term + 1):
        due = _add_months(first_due, n - 1)
        paid = due - datetime.timedelta(days=rng.choice([0, 0, 1, 2]))
        paid_at = datetime.datetime.combine(paid, datetime.time(10), datetime.UTC)
        if paid_at > now:
            break
        interest = (balance * apr / 12).quantize(Decimal("0.01"))
        data = {"loan_id": loan_id, "installment": n, "due_date": due.isoformat(), "paid_date": paid.isoformat(),
                "principal": str(principal_part), "interest": str(interest)}  # fmt: skip
        pk = event("repayment.paid", paid_at, data)
        writer.add("referrals_repayment", (loan_pk, n, due, paid, principal_part, interest, pk))
        balance -= principal_part


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _json(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _add_months(day: datetime.date, n: int) -> datetime.date:
    month = day.month - 1 + n
    year, month = day.year + month // 12, month % 12 + 1
    return day.replace(year=year, month=month, day=min(day.day, 28))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--applicants", type=int, default=2000)
    parser.add_argument("--months", type=int, default=5, help="months of loan history before this one")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    _setup_django()
    stats = generate(applicants=args.applicants, months=args.months, seed=args.seed)
    print(f"{stats.total:,} rows in {stats.seconds:.1f} s ({stats.total / stats.seconds:,.0f} rows/s)")
    for table, n in stats.rows.items():
        print(f"  {table:32} {n:>12,}")


if __name__ == "__main__":
    main()
