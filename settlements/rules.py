"""The fee rules: one small registered class per line type of ``settlement-rules.md``.

Each rule reads its source rows for one partner and one time window with a single query (plus
at most one per month for look-ups), and yields lines priced under the contract version the
referral was routed under. The engine (``settlements.services.statements``) runs the rules in
registration order — clawbacks after the fees they take back — and writes the lines in batches.

Adding a fee type: add a ``LineType``, write a rule here with ``@register``, add its tests
(each boundary), and list it in the README's checklist.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Exists, OuterRef, Q, Subquery

from config.money import round_money
from partners.models import Contract, Partner
from referrals.models import CallbackEvent, Loan, LoanOverdue, Reclaim, Referral, Repayment
from settlements import periods
from settlements.models import LineType, StatementLine
from settlements.periods import Window


@dataclass(frozen=True)
class Terms:
    """The money terms of one contract version, as ``Decimal``."""

    application_fee: Decimal
    tiers: tuple[tuple[int, Decimal], ...]  # (from_count, fee), ascending, starting at 1
    approval_fee: Decimal
    disbursement_rate: Decimal
    interest_share_rate: Decimal
    vat_rate: Decimal
    fpd_days: int
    duplicate_return_hours: int
    reclaim_fee: Decimal

    @classmethod
    def of(cls, contract: Contract) -> Terms:
        fees, clawback, reclaim = contract.fees or {}, contract.clawback or {}, contract.reclaim or {}
        base = Decimal(str(fees.get("application_fee", "0")))
        tiers = sorted((int(t["from_count"]), Decimal(str(t["fee"]))) for t in fees.get("application_fee_tiers", []))
        return cls(
            application_fee=base,
            tiers=((1, base), *((n, fee) for n, fee in tiers if n > 1)),
            approval_fee=Decimal(str(fees.get("approval_fee", "0"))),
            disbursement_rate=Decimal(str(fees.get("disbursement_rate", "0"))),
            interest_share_rate=Decimal(str(fees.get("interest_share_rate", "0"))),
            vat_rate=Decimal(str(fees.get("vat_rate", "0"))),
            fpd_days=int(clawback.get("fpd_days", 0) or 0),
            duplicate_return_hours=int(clawback.get("duplicate_return_hours", 0) or 0),
            reclaim_fee=Decimal(str(reclaim.get("fee", "0") or "0")),
        )

    def application_fee_for(self, n: int) -> Decimal:
        """The fee of the tier with the largest ``from_count ≤ n``."""
        fee = self.application_fee
        for from_count, tier_fee in self.tiers:
            if from_count <= n:
                fee = tier_fee
        return fee

    def disbursement_fee(self, principal: Decimal | None) -> Decimal:
        return round_money(principal * self.disbursement_rate) if principal else Decimal("0.00")


@dataclass
class Line:
    """A line before it lands on a statement."""

    line_type: str
    key: str
    amount: Decimal
    contract_id: int
    referral_id: uuid.UUID
    occurred_at: datetime.datetime
    basis: str
    loan_id: int | None = None
    event_id: int | None = None

    def model(self, *, statement_id, vat_rate: Decimal, late: bool) -> StatementLine:
        return StatementLine(
            statement_id=statement_id, line_type=self.line_type, key=self.key, amount=self.amount,
            vat_rate=vat_rate, contract_id=self.contract_id, referral_id=self.referral_id, loan_id=self.loan_id,
            event_id=self.event_id, occurred_at=self.occurred_at, late=late, basis=self.basis[:200],
        )  # fmt: skip


@dataclass
class Context:
    """One partner and one window, with the contract terms and what this computation charged."""

    partner: Partner
    window: Window
    terms_by_contract: dict[int, Terms] = field(default_factory=dict)
    application_fees: dict[uuid.UUID, Decimal] = field(default_factory=dict)
    _numbering: dict[str, dict[uuid.UUID, int]] = field(default_factory=dict)

    def terms(self, contract_id: int) -> Terms:
        if contract_id not in self.terms_by_contract:
            for contract in Contract.objects.filter(partner=self.partner):
                self.terms_by_contract[contract.pk] = Terms.of(contract)
        return self.terms_by_contract[contract_id]

    def acceptance_numbers(self, period: str) -> dict[uuid.UUID, int]:
        """Acceptance order within a month: 1, 2, 3… by acceptance time, ties by referral id."""
        if period not in self._numbering:
            month = periods.window(period)
            ids = accepted(self.partner, month).values_list("id", flat=True)
            self._numbering[period] = {rid: n for n, rid in enumerate(ids.iterator(), start=1)}
        return self._numbering[period]

    def application_fees_charged(self, referrals: list[tuple[uuid.UUID, int, datetime.datetime]]) -> dict:
        """What each referral's application fee was (or will be) on a statement: this computation's
        line, else the line already on a statement (one query), else its place in its month."""
        missing = [r for r in referrals if r[0] not in self.application_fees]
        keys = {f"{LineType.APPLICATION_FEE}:{referral_id}": referral_id for referral_id, *_rest in missing}
        on_statements = {
            keys[key]: amount for key, amount in StatementLine.objects.filter(key__in=keys).values_list("key", "amount")
        }
        charged = {}
        for referral_id, contract_id, accepted_at in referrals:
            if referral_id in self.application_fees:
                charged[referral_id] = self.application_fees[referral_id]
            elif referral_id in on_statements:
                charged[referral_id] = on_statements[referral_id]
            else:
                n = self.acceptance_numbers(periods.of(accepted_at))[referral_id]
                charged[referral_id] = self.terms(contract_id).application_fee_for(n)
        return charged


RULES: list[Rule] = []


def register(rule_class: type[Rule]) -> type[Rule]:
    RULES.append(rule_class())
    return rule_class


class Rule:
    line_type: str

    def lines(self, ctx: Context) -> Iterator[Line]:  # pragma: no cover - interface
        raise NotImplementedError


# --- shared queries ---------------------------------------------------------------------------
def accepted(partner: Partner, window: Window):
    return Referral.objects.filter(partner=partner, accepted_at__gte=window.start, accepted_at__lt=window.end).order_by(
        "accepted_at", "id"
    )


def _event(type_: str, at_field: str, ref_field: str = "referral"):
    """The id of the callback event that set ``at_field`` (events keep their exact ``occurred_at``)."""
    events = CallbackEvent.objects.filter(
        referral=OuterRef(ref_field), type=type_, occurred_at=OuterRef(at_field), status=CallbackEvent.Status.PROCESSED
    )
    return Subquery(events.order_by("id").values("id")[:1])


def _carries_approval(loan: str = ""):
    """True for the loan that carries its referral's approval fee (the first approved). ``loan``
    is the path to the loan when the query is not over loans."""
    path = f"{loan}__" if loan else ""
    at = OuterRef(f"{path}approved_at")
    earlier = Loan.objects.filter(referral=OuterRef(f"{path}referral"), approved_at__isnull=False).filter(
        Q(approved_at__lt=at) | Q(approved_at=at, id__lt=OuterRef(loan or "id"))
    )
    return ~Exists(earlier)


# --- the rules --------------------------------------------------------------------------------
@register
class ApplicationFee(Rule):
    """The partner accepted the application: the fee of the tier its acceptance number falls in."""

    line_type = LineType.APPLICATION_FEE

    def lines(self, ctx):
        rows = accepted(ctx.partner, ctx.window).values_list(
            "id", "contract_id", "accepted_at", _event("application.accepted", "accepted_at", "pk")
        )
        month, n = None, 0
        for referral_id, contract_id, at, event_id in rows.iterator(chunk_size=5000):
            if periods.of(at) != month:  # numbering restarts with each statement month
                month, n = periods.of(at), 0
            n += 1
            amount = ctx.terms(contract_id).application_fee_for(n)
            ctx.application_fees[referral_id] = amount
            yield Line(
                self.line_type, f"{self.line_type}:{referral_id}", amount, contract_id, referral_id, at,
                f"#{n}", event_id=event_id,
            )  # fmt: skip


@register
class ApprovalFee(Rule):
    """``loan.approved``, once per referral."""

    line_type = LineType.APPROVAL_FEE

    def lines(self, ctx):
        rows = (
            Loan.objects.filter(partner=ctx.partner, approved_at__gte=ctx.window.start, approved_at__lt=ctx.window.end)
            .filter(_carries_approval())
            .order_by("approved_at", "id")
            .values_list(
                "id", "referral_id", "referral__contract_id", "approved_at", _event("loan.approved", "approved_at")
            )
        )
        for loan_id, referral_id, contract_id, at, event_id in rows.iterator(chunk_size=5000):
            amount = ctx.terms(contract_id).approval_fee
            yield Line(
                self.line_type, f"{self.line_type}:{referral_id}", amount, contract_id, referral_id, at, "",
                loan_id=loan_id, event_id=event_id,
            )  # fmt: skip


@register
class DisbursementFee(Rule):
    """``loan.disbursed``, once per loan: principal × disbursement rate."""

    line_type = LineType.DISBURSEMENT_FEE

    def lines(self, ctx):
        rows = (
            Loan.objects.filter(
                partner=ctx.partner,
                disbursed_at__gte=ctx.window.start,
                disbursed_at__lt=ctx.window.end,
                principal__isnull=False,
            )
            .order_by("disbursed_at", "id")
            .values_list(
                "id",
                "referral_id",
                "referral__contract_id",
                "disbursed_at",
                "principal",
                _event("loan.disbursed", "disbursed_at"),
            )
        )
        for loan_id, referral_id, contract_id, at, principal, event_id in rows.iterator(chunk_size=5000):
            terms = ctx.terms(contract_id)
            yield Line(
                self.line_type, f"{self.line_type}:{loan_id}", terms.disbursement_fee(principal), contract_id,
                referral_id, at, f"{principal} × {terms.disbursement_rate}", loan_id=loan_id, event_id=event_id,
            )  # fmt: skip


@register
class InterestShare(Rule):
    """Each ``repayment.posted``, by ``paid_date``: interest × interest share rate."""

    line_type = LineType.INTEREST_SHARE

    def lines(self, ctx):
        rows = (
            Repayment.objects.filter(
                loan__partner=ctx.partner, paid_date__gte=ctx.window.first_day, paid_date__lt=ctx.window.end_day
            )
            .order_by("paid_date", "id")
            .values_list(
                "id", "loan_id", "loan__referral_id", "loan__referral__contract_id", "paid_date", "interest", "event_id"
            )
        )
        for repayment_id, loan_id, referral_id, contract_id, paid, interest, event_id in rows.iterator(chunk_size=5000):
            rate = ctx.terms(contract_id).interest_share_rate
            yield Line(
                self.line_type, f"{self.line_type}:{repayment_id}", round_money(interest * rate), contract_id,
                referral_id, periods.day_start(paid), f"{interest} × {rate}", loan_id=loan_id, event_id=event_id,
            )  # fmt: skip


@register
class ClawbackReturned(Rule):
    """``application.returned`` within the contract's window of acceptance takes the application fee
    back; a later return charges nothing back."""

    line_type = LineType.CLAWBACK_RETURNED

    def lines(self, ctx):
        rows = (
            Referral.objects.filter(
                partner=ctx.partner,
                returned_at__gte=ctx.window.start,
                returned_at__lt=ctx.window.end,
                accepted_at__isnull=False,
            )
            .order_by("returned_at", "id")
            .values_list(
                "id", "contract_id", "accepted_at", "returned_at", _event("application.returned", "returned_at", "pk")
            )
        )
        inside = [
            row
            for row in rows.iterator(chunk_size=5000)
            if row[3] - row[2] <= datetime.timedelta(hours=ctx.terms(row[1]).duplicate_return_hours)
        ]  # a later return charges nothing back
        charged = ctx.application_fees_charged(
            [(referral_id, contract, at) for referral_id, contract, at, *_ in inside]
        )
        for referral_id, contract_id, _accepted_at, returned_at, event_id in inside:
            hours = ctx.terms(contract_id).duplicate_return_hours
            yield Line(
                self.line_type, f"{self.line_type}:{referral_id}", -charged[referral_id], contract_id, referral_id,
                returned_at, f"≤ {hours} h", event_id=event_id,
            )  # fmt: skip


@register
class ClawbackFirstPaymentDefault(Rule):
    """Instalment 1 overdue by at least ``fpd_days`` (once per loan, at the first report that
    reaches it): takes back the loan's disbursement fee and approval fee."""

    line_type = LineType.CLAWBACK_FPD

    def lines(self, ctx):
        in_window = LoanOverdue.objects.filter(
            loan__partner=ctx.partner, installment=1, occurred_at__gte=ctx.window.start, occurred_at__lt=ctx.window.end
        ).values("loan_id")
        rows = (
            LoanOverdue.objects.filter(installment=1, loan_id__in=in_window)
            .annotate(carries_approval=_carries_approval("loan"))
            .order_by("loan_id", "occurred_at", "id")
            .values_list(
                "loan_id",
                "loan__referral_id",
                "loan__referral__contract_id",
                "days_past_due",
                "occurred_at",
                "event_id",
                "loan__principal",
                "loan__approved_at",
                "carries_approval",
            )
        )
        done: set[int] = set()
        for loan_id, referral_id, contract_id, dpd, at, event_id, principal, approved_at, carries in rows.iterator(
            chunk_size=5000
        ):
            terms = ctx.terms(contract_id)
            if loan_id in done or dpd < terms.fpd_days:
                continue
            done.add(loan_id)  # the first report that reaches fpd_days decides, in whichever month
            if at not in ctx.window:
                continue
            approval = terms.approval_fee if approved_at is not None and carries else Decimal("0")
            amount = -(terms.disbursement_fee(principal) + approval)
            yield Line(
                self.line_type, f"{self.line_type}:{loan_id}", amount, contract_id, referral_id, at,
                f"{dpd} ≥ {terms.fpd_days} d", loan_id=loan_id, event_id=event_id,
            )  # fmt: skip


@register
class ReclaimFee(Rule):
    """A reclaim the partner acknowledged: Spillway owes the partner the contract's reclaim fee."""

    line_type = LineType.RECLAIM_FEE

    def lines(self, ctx):
        rows = (
            Reclaim.objects.filter(
                partner=ctx.partner, acknowledged_at__gte=ctx.window.start, acknowledged_at__lt=ctx.window.end
            )
            .order_by("acknowledged_at", "id")
            .values_list("id", "referral_id", "loan_id", "contract_id", "acknowledged_at")
        )
        for reclaim_id, referral_id, loan_id, contract_id, at in rows.iterator(chunk_size=5000):
            fee = ctx.terms(contract_id).reclaim_fee
            yield Line(
                self.line_type, f"{self.line_type}:{reclaim_id}", -round_money(fee), contract_id, referral_id, at,
                f"reclaim {str(reclaim_id)[:8]}", loan_id=loan_id,
            )  # fmt: skip
