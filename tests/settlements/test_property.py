"""For random event streams, the November statement equals a straightforward recomputation written
here — a plain loop over the events, from settlement-rules.md, not from ``settlements.rules`` —
and computing it again gives the same statement.

Six referrals of one partner are made once, through the real pipeline. Each example randomises the
contract's fees (written through the contract terms' own validation), draws acceptances, returns
around the duplicate-return window, loans, repayments and overdue reports over November 2026 and
its edges in October and December, receives and applies them in a random order, computes the
statement and compares it line by line. Everything an example writes is rolled back.
"""

from __future__ import annotations

import datetime
import uuid
from collections import Counter, defaultdict
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partners.models import Contract
from partners.terms import normalise_terms
from referrals.models import CallbackEvent, Loan
from referrals.services.callbacks import callback_apply, callback_receive
from settlements.models import StatementLine
from settlements.services.statements import statement_compute
from tests.settlements.builders import CST, at, submitting

REFERRALS = 6
PERIOD_START, PERIOD_END = at(1, 0), at(1, 0, month=12)  # November 2026, Asia/Shanghai
SPAN_START, SPAN_END = at(28, 0, month=10), at(3, 0, month=12)
SECOND = datetime.timedelta(seconds=1)
EDGES = [PERIOD_START - SECOND, PERIOD_START, at(15, 12), PERIOD_END - SECOND, PERIOD_END]


# --- the world, drawn ---------------------------------------------------------------------------
def cents(high: int):
    return st.integers(0, high).map(lambda c: Decimal(c).scaleb(-2))


def rate(high: int):
    return st.integers(0, high).map(lambda n: Decimal(n).scaleb(-4))


moments = st.one_of(
    st.sampled_from(EDGES),  # window edges, and a moment shared by several events (ties)
    st.integers(0, int((SPAN_END - SPAN_START).total_seconds() // 60)).map(
        lambda m: SPAN_START + datetime.timedelta(minutes=m)
    ),
)
paid_dates = st.one_of(
    st.sampled_from([datetime.date(2026, 10, 31), datetime.date(2026, 11, 1), datetime.date(2026, 11, 30),
                     datetime.date(2026, 12, 1)]),
    st.dates(datetime.date(2026, 10, 28), datetime.date(2026, 12, 2)),
)  # fmt: skip


@st.composite
def contract_terms(draw) -> tuple[dict, dict]:
    tiers = draw(st.lists(st.tuples(st.integers(2, 7), cents(5000)), max_size=2, unique_by=lambda t: t[0]))
    fees = {
        "application_fee": str(draw(cents(5000))),
        "application_fee_tiers": [{"from_count": n, "fee": str(fee)} for n, fee in tiers],
        "approval_fee": str(draw(cents(2000))),
        "disbursement_rate": str(draw(rate(300))),
        "interest_share_rate": str(draw(rate(5000))),
        "vat_rate": str(draw(st.one_of(st.sampled_from([Decimal("0.0600"), Decimal("0")]), rate(2000)))),
    }
    clawback = {"fpd_days": draw(st.integers(1, 45)), "duplicate_return_hours": draw(st.sampled_from([0, 1, 48, 72]))}
    return fees, clawback


def body(type_: str, referral, when: datetime.datetime, **data) -> dict:
    return {
        "event_id": f"EV-{uuid.uuid4().hex[:16]}", "type": type_, "referral_id": str(referral.pk),
        "occurred_at": when.isoformat(), "data": data,
    }  # fmt: skip


@st.composite
def event_stream(draw, referrals, clawback: dict) -> list[dict]:
    """What the partner tells us about the referrals, in the order it happened (roughly)."""
    hours, fpd_days = clawback["duplicate_return_hours"], clawback["fpd_days"]
    events = []
    for i, referral in enumerate(referrals):
        if draw(st.integers(0, 4)) == 0:  # never accepted; sometimes rejected
            if draw(st.booleans()):
                events.append(body("application.rejected", referral, draw(moments), application_id="", reason="no"))
            continue
        accepted_at = draw(moments)
        events.append(body("application.accepted", referral, accepted_at, application_id="", reason=""))
        if draw(st.booleans()):
            window = hours * 3600
            offset = draw(
                st.one_of(
                    st.sampled_from([window - 60, window - 1, window, window + 1, window + 60]),
                    st.integers(0, window + 24 * 3600),
                ).filter(lambda s: s >= 0)
            )
            returned_at = accepted_at + datetime.timedelta(seconds=offset)
            events.append(body("application.returned", referral, returned_at, reason="duplicate"))
        for k in range(draw(st.integers(0, 2))):
            loan = f"L-{i}-{k}"
            for approved_at in draw(st.lists(moments, max_size=2)):  # a resent approval: the earliest counts
                events.append(body("loan.approved", referral, approved_at, loan_id=loan, credit_limit="50000.00"))
            if not draw(st.booleans()):
                continue
            principal = draw(
                st.one_of(st.integers(1, 2000), st.integers(1, 50_000_000)).map(lambda c: Decimal(c).scaleb(-2))
            )
            events.append(
                body(
                    "loan.disbursed",
                    referral,
                    draw(moments),
                    loan_id=loan,
                    principal=str(principal),
                    apr="0.1800",
                    term_months=12,
                    first_due_date="2026-10-15",
                )
            )
            for installment in draw(st.lists(st.integers(1, 4), unique=True, max_size=3)):
                paid = draw(paid_dates)
                posted = datetime.datetime.combine(paid, datetime.time(draw(st.integers(0, 23))), tzinfo=CST)
                posted += datetime.timedelta(days=draw(st.integers(0, 1)))  # sometimes told the next day
                events.append(
                    body(
                        "repayment.posted",
                        referral,
                        posted,
                        loan_id=loan,
                        installment=installment,
                        due_date=paid.isoformat(),
                        paid_date=paid.isoformat(),
                        principal="1000.00",
                        interest=str(draw(cents(99_999))),
                    )
                )
            due = draw(st.dates(datetime.date(2026, 9, 20), datetime.date(2026, 11, 25)))
            candidates = sorted({d for d in (1, fpd_days - 1, fpd_days, fpd_days + 1, fpd_days + 10) if d >= 1})
            for dpd in draw(st.lists(st.sampled_from(candidates), unique=True, max_size=3)):
                # Reported on the day the instalment is ``dpd`` days overdue: later reports, more days.
                day = due + datetime.timedelta(days=dpd)
                when = datetime.datetime.combine(day, datetime.time(0), tzinfo=CST)
                when += datetime.timedelta(minutes=draw(st.integers(0, 24 * 60 - 1)))
                events.append(
                    body("loan.overdue", referral, when, loan_id=loan, installment=1, due_date=due.isoformat(),
                         days_past_due=dpd)
                )  # fmt: skip
            if draw(st.integers(0, 3)) == 0:  # instalment 2 overdue: never a first-payment default
                events.append(
                    body("loan.overdue", referral, draw(moments), loan_id=loan, installment=2, due_date="2026-10-15",
                         days_past_due=fpd_days + 5)
                )  # fmt: skip
    return events


# --- the recomputation ---------------------------------------------------------------------------
def money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def in_period(moment: datetime.datetime) -> bool:
    return PERIOD_START <= moment < PERIOD_END


def month_of(moment: datetime.datetime) -> tuple[int, int]:
    local = moment.astimezone(CST)
    return local.year, local.month


def expected_statement(events: list[dict], fees: dict, clawback: dict, loan_pks: dict[str, int]):
    """settlement-rules.md, by hand: ``(Counter of (type, referral, loan, amount, late), net, vat, gross)``."""
    application_fee = Decimal(fees["application_fee"])
    tiers = sorted(
        [(1, application_fee)] + [(t["from_count"], Decimal(t["fee"])) for t in fees["application_fee_tiers"]]
    )
    approval_fee, vat_rate = Decimal(fees["approval_fee"]), Decimal(fees["vat_rate"])
    disbursement_rate, interest_rate = Decimal(fees["disbursement_rate"]), Decimal(fees["interest_share_rate"])
    fpd_days, hours = clawback["fpd_days"], clawback["duplicate_return_hours"]

    accepted, returned = {}, {}
    approvals: dict[str, list[datetime.datetime]] = defaultdict(list)
    referral_of: dict[str, str] = {}
    disbursed: dict[str, tuple[datetime.datetime, Decimal]] = {}
    repayments: list[tuple[str, str, datetime.date, Decimal]] = []
    overdue: dict[str, list[tuple[datetime.datetime, int]]] = defaultdict(list)
    for event in events:
        when, referral, data = (
            datetime.datetime.fromisoformat(event["occurred_at"]),
            event["referral_id"],
            event["data"],
        )
        if "loan_id" in data:
            referral_of[data["loan_id"]] = referral
        match event["type"]:
            case "application.accepted":
                accepted[referral] = when
            case "application.returned":
                returned[referral] = when
            case "loan.approved":
                approvals[data["loan_id"]].append(when)
            case "loan.disbursed":
                disbursed[data["loan_id"]] = (when, Decimal(data["principal"]))
            case "repayment.posted":
                paid = datetime.date.fromisoformat(data["paid_date"])
                repayments.append((referral, data["loan_id"], paid, Decimal(data["interest"])))
            case "loan.overdue" if data["installment"] == 1:
                overdue[data["loan_id"]].append((when, data["days_past_due"]))

    lines = []  # (type, referral, loan pk or None, amount)

    # Application fees: numbered per month by (acceptance time, referral id), tiered.
    by_month = defaultdict(list)
    for referral, when in accepted.items():
        by_month[month_of(when)].append((when, uuid.UUID(referral), referral))
    charged = {}
    for acceptances in by_month.values():
        for n, (when, _id, referral) in enumerate(sorted(acceptances), start=1):
            charged[referral] = next(fee for from_count, fee in reversed(tiers) if from_count <= n)
            if in_period(when):
                lines.append(("application_fee", referral, None, charged[referral]))

    # Returned within the window (inclusive) of acceptance: the fee charged comes back.
    for referral, when in returned.items():
        if in_period(when) and when - accepted[referral] <= datetime.timedelta(hours=hours):
            lines.append(("clawback_returned", referral, None, -charged[referral]))

    # Approval fee: once per referral, at its first approval (the loan approved first carries it).
    first_approval = {}
    for loan, times in approvals.items():
        candidate = (min(times), loan_pks[loan], loan)
        referral = referral_of[loan]
        if referral not in first_approval or candidate < first_approval[referral]:
            first_approval[referral] = candidate
    carriers = {loan for _when, _pk, loan in first_approval.values()}
    for referral, (when, pk, _loan) in first_approval.items():
        if in_period(when):
            lines.append(("approval_fee", referral, pk, approval_fee))

    # Disbursement fee: once per loan.
    def disbursement_fee(loan: str) -> Decimal:
        return money(disbursed[loan][1] * disbursement_rate) if loan in disbursed else Decimal("0")

    for loan, (when, _principal) in disbursed.items():
        if in_period(when):
            lines.append(("disbursement_fee", referral_of[loan], loan_pks[loan], disbursement_fee(loan)))

    # Interest share: each repayment, by its paid date.
    for referral, loan, paid, interest in repayments:
        if PERIOD_START.date() <= paid < PERIOD_END.date():
            lines.append(("interest_share", referral, loan_pks[loan], money(interest * interest_rate)))

    # First-payment default: the first report of instalment 1 reaching fpd_days, once per loan.
    for loan, reports in overdue.items():
        reaching = sorted(when for when, dpd in reports if dpd >= fpd_days)
        if reaching and in_period(reaching[0]):
            taken = disbursement_fee(loan) + (approval_fee if loan in carriers else Decimal("0"))
            lines.append(("clawback_fpd", referral_of[loan], loan_pks[loan], -taken))

    lines = [(kind, referral, loan, money(amount), False) for kind, referral, loan, amount in lines if money(amount)]
    net = sum((line[3] for line in lines), Decimal("0.00"))
    vat = money(net * vat_rate)
    return Counter(lines), net, vat, net + vat


# --- the property --------------------------------------------------------------------------------
@pytest.fixture
def referrals(contract, origination_api, text, partner):
    return submitting(origination_api, text, partner, REFERRALS)


class _RollBack(Exception):
    pass


def statement_lines(statement) -> list[tuple]:
    rows = StatementLine.objects.filter(statement=statement).values_list(
        "key", "line_type", "referral_id", "loan_id", "event_id", "amount", "vat_rate", "occurred_at", "late", "basis"
    )
    return sorted(rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_statement_equals_a_recomputation_by_hand_and_recomputing_changes_nothing(
    referrals, contract, partner, finance_user, data
):
    fees, clawback = data.draw(contract_terms(), label="terms")
    events = data.draw(event_stream(referrals, clawback), label="events")
    order = data.draw(st.permutations(range(len(events))), label="arrival order")
    try:
        with transaction.atomic():
            Contract.objects.filter(pk=contract.pk).update(
                fees=normalise_terms("fees", fees), clawback=normalise_terms("clawback", clawback)
            )
            for index in order:
                stored, created = callback_receive(partner=partner, body=events[index])
                assert created
                callback_apply(stored.pk)
            assert not CallbackEvent.objects.filter(status=CallbackEvent.Status.RECEIVED).exists()
            loan_pks = dict(Loan.objects.filter(partner=partner).values_list("loan_id", "pk"))

            statement, computed = statement_compute(partner=partner, period="2026-11", user=finance_user)
            assert computed
            got = Counter(
                (line.line_type, str(line.referral_id), line.loan_id, line.amount, line.late)
                for line in statement.lines.all()
            )
            lines, net, vat, gross = expected_statement(events, fees, clawback, loan_pks)
            assert got == lines
            assert (statement.net, statement.vat, statement.gross, statement.line_count) == (
                net, vat, gross, sum(lines.values())
            )  # fmt: skip

            first = (statement.pk, statement.net, statement.vat, statement.gross, statement_lines(statement))
            again, computed = statement_compute(partner=partner, period="2026-11", user=finance_user)
            assert computed
            assert (again.pk, again.net, again.vat, again.gross, statement_lines(again)) == first
            raise _RollBack
    except _RollBack:
        pass
