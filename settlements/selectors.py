"""Read-side queries for the settlement screens: each is one query (or a fixed few), whatever the
size of the statement or the number of months.

A statement may have hundreds of thousands of lines: its page shows the first ``per_type`` lines of
each line type (a window function picks them in one query) with a count and subtotal of all of
them (one aggregate query), never every line.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from django.db.models import Count, F, QuerySet, Sum, Window
from django.db.models.functions import RowNumber

from settlements import periods
from settlements.models import (
    LineType,
    Reconciliation,
    ReconciliationItem,
    Statement,
    StatementLine,
    StatementTransition,
)

ZERO = Decimal("0.00")
LINE_TYPE_ORDER = {value: index for index, value in enumerate(LineType.values)}
KIND_ORDER = {value: index for index, value in enumerate(ReconciliationItem.Kind.values)}
# Statuses from which a statement no longer changes: what the partner is (or was) actually billed.
BILLED = (Statement.Status.APPROVED, Statement.Status.ISSUED, Statement.Status.PAID)
# What a statement's page shows of a line, its loan and its callback (never the callback's data).
LINE_FIELDS = (
    "id", "statement_id", "line_type", "key", "amount", "vat_rate", "referral_id", "occurred_at", "late", "basis",
    "loan__id", "loan__loan_id", "event__id", "event__type", "event__event_id",
)  # fmt: skip


def money(value) -> Decimal:
    """A sum as CNY with two places (SQLite's SUM comes back as ``60``, not ``60.00``; none is 0.00)."""
    return ZERO if value is None else Decimal(value).quantize(ZERO)


# --- the statements list ----------------------------------------------------------------------
def statement_totals(queryset: QuerySet[Statement]) -> dict:
    """Σ net, VAT and gross and the number of statements of a (filtered) list: one aggregate query."""
    totals = queryset.order_by().aggregate(count=Count("pk"), net=Sum("net"), vat=Sum("vat"), gross=Sum("gross"))
    return {"count": totals["count"], **{key: money(totals[key]) for key in ("net", "vat", "gross")}}


# --- one statement ----------------------------------------------------------------------------
@dataclasses.dataclass
class LineGroup:
    """The lines of one type on a statement: all of them counted and added up, the first few listed."""

    line_type: str
    label: str
    count: int
    subtotal: Decimal
    lines: list[StatementLine] = dataclasses.field(default_factory=list)

    @property
    def more(self) -> int:
        return max(self.count - len(self.lines), 0)


def statement_line_groups(statement: Statement, *, per_type: int = 200) -> list[LineGroup]:
    """The statement's lines by type, in the rules' order (fees, then clawbacks): two queries."""
    labels = dict(LineType.choices)
    groups = {
        row["line_type"]: LineGroup(
            line_type=row["line_type"],
            label=str(labels.get(row["line_type"], row["line_type"])),
            count=row["count"],
            subtotal=money(row["subtotal"]),
        )
        for row in StatementLine.objects.filter(statement=statement)
        .values("line_type")
        .annotate(count=Count("pk"), subtotal=Sum("amount"))
        .order_by("line_type")
    }
    if not groups:
        return []
    lines = (
        StatementLine.objects.filter(statement=statement)
        .select_related("loan", "event")
        .only(*LINE_FIELDS)
        .annotate(
            rank=Window(RowNumber(), partition_by=[F("line_type")], order_by=[F("occurred_at").asc(), F("id").asc()])
        )
        .filter(rank__lte=per_type)
        .order_by("line_type", "occurred_at", "id")
    )
    for line in lines:
        group = groups.get(line.line_type)
        if group is not None:
            group.lines.append(line)
    return sorted(groups.values(), key=lambda g: (LINE_TYPE_ORDER.get(g.line_type, len(LINE_TYPE_ORDER)), g.line_type))


def statement_transitions(statement: Statement) -> list[StatementTransition]:
    return list(statement.transitions.select_related("by").order_by("at", "id"))


@dataclasses.dataclass
class ItemList:
    kind: str
    label: str
    count: int
    items: list[ReconciliationItem] = dataclasses.field(default_factory=list)

    @property
    def more(self) -> int:
        return max(self.count - len(self.items), 0)


@dataclasses.dataclass
class ReconciliationView:
    reconciliation: Reconciliation
    lists: list[ItemList]
    stale: bool  # made against lines the statement no longer has (it was recomputed since)


def latest_reconciliation(statement: Statement, *, per_kind: int = 200) -> ReconciliationView | None:
    """The newest reconciliation with its differences in three lists (only ours, only theirs,
    amounts differ), the first ``per_kind`` of each: two queries."""
    reconciliation = (
        Reconciliation.objects.filter(statement=statement)
        .select_related("uploaded_by")
        .order_by("-uploaded_at", "-id")
        .first()
    )
    if reconciliation is None:
        return None
    counts = {
        ReconciliationItem.Kind.ONLY_OURS: reconciliation.only_ours,
        ReconciliationItem.Kind.ONLY_THEIRS: reconciliation.only_theirs,
        ReconciliationItem.Kind.AMOUNT_DIFFERS: reconciliation.amounts_differ,
    }
    lists = {
        kind: ItemList(kind=kind, label=str(label), count=counts.get(kind, 0))
        for kind, label in ReconciliationItem.Kind.choices
    }
    if reconciliation.differences:
        items = (
            ReconciliationItem.objects.filter(reconciliation=reconciliation)
            .annotate(
                rank=Window(RowNumber(), partition_by=[F("kind")], order_by=[F("line_type").asc(), F("id").asc()])
            )
            .filter(rank__lte=per_kind)
            .order_by("kind", "line_type", "id")
        )
        for item in items:
            if item.kind in lists:
                lists[item.kind].items.append(item)
    return ReconciliationView(
        reconciliation=reconciliation,
        lists=sorted(lists.values(), key=lambda item_list: KIND_ORDER[item_list.kind]),
        stale=reconciliation.statement_computed_at != statement.computed_at,
    )


# --- revenue over time ------------------------------------------------------------------------
@dataclasses.dataclass
class RevenueSeries:
    partner: str
    amounts: list[Decimal]

    @property
    def total(self) -> Decimal:
        return sum(self.amounts, ZERO)


@dataclasses.dataclass
class Revenue:
    periods: list[str]
    series: list[RevenueSeries]

    @property
    def totals(self) -> list[Decimal]:
        return [sum((s.amounts[i] for s in self.series), ZERO) for i in range(len(self.periods))]

    @property
    def total(self) -> Decimal:
        return sum(self.totals, ZERO)

    def chart_data(self) -> dict:
        """For Chart.js through ``json_script``: amounts as strings (exact; the script makes numbers)."""
        return {
            "labels": self.periods,
            "datasets": [{"label": s.partner, "data": [str(a) for a in s.amounts]} for s in self.series],
        }


def monthly_revenue(*, last: str, months: int = 12, billed_only: bool = False) -> Revenue:
    """Gross revenue per partner for the ``months`` periods ending with ``last``: one aggregate
    query over statements grouped by period and partner code."""
    first = periods.shift(last, -(months - 1))
    labels = [periods.shift(first, offset) for offset in range(months)]
    statements = Statement.objects.filter(period__gte=first, period__lte=last)
    if billed_only:
        statements = statements.filter(status__in=BILLED)
    rows = statements.values("period", "partner__code").annotate(gross=Sum("gross")).order_by("partner__code", "period")
    index = {period: position for position, period in enumerate(labels)}
    by_partner: dict[str, list[Decimal]] = {}
    for row in rows:
        amounts = by_partner.setdefault(row["partner__code"], [ZERO] * months)
        amounts[index[row["period"]]] = money(row["gross"])
    return Revenue(periods=labels, series=[RevenueSeries(code, amounts) for code, amounts in by_partner.items()])
