"""Reconciliation: the partner's own figures (CSV ``referral_id,line_type,amount``) against our
statement, matched on ``(referral_id, line_type)``.

A file with any bad row is refused whole, with one message per bad row, and nothing is stored.
Several rows with the same key are added up (a partner may list each repayment's share).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import uuid
from collections import defaultdict
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from referrals.models import Referral
from settlements.models import LineType, Reconciliation, ReconciliationItem, Statement

COLUMNS = ["referral_id", "line_type", "amount"]
MAX_BYTES = 20 * 1024 * 1024
MAX_MESSAGES = 50
LIMIT = Decimal("1000000000000")  # what a line's column holds (14 digits, 2 places)
TOTAL_LIMIT = Decimal("100000000000000")  # what a total's column holds (16 digits)
AMOUNT = re.compile(r"^-?[0-9]{1,12}(\.[0-9]{1,2})?$")

Key = tuple[uuid.UUID, str]


def parse_partner_csv(content: bytes, *, partner_id: int) -> tuple[dict[Key, Decimal], int]:
    """``{(referral id, line type): amount}`` and the number of rows, or a ValidationError on
    ``file`` listing every bad row."""
    if len(content) > MAX_BYTES:
        raise ValidationError({"file": [_("The file is larger than 20 MB.")]})
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError({"file": [_("The file is not UTF-8 text.")]}) from None
    try:
        return _parse(csv.reader(io.StringIO(text, newline="")), partner_id)
    except csv.Error as exc:  # e.g. a cell larger than the csv module's field limit
        raise ValidationError({"file": [_("The file is not a readable CSV: %(error)s") % {"error": exc}]}) from None


def _parse(reader, partner_id: int) -> tuple[dict[Key, Decimal], int]:
    header = [cell.strip().lower() for cell in next(reader, [])]
    if header != COLUMNS:
        raise ValidationError(
            {"file": [_("The first row must be exactly: %(columns)s.") % {"columns": ",".join(COLUMNS)}]}
        )
    errors: list[str] = []
    rows: list[tuple[int, uuid.UUID, str, Decimal]] = []
    for number, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(COLUMNS):
            errors.append(_("row %(n)d: expected 3 columns, found %(found)d.") % {"n": number, "found": len(cells)})
            continue
        raw_id, line_type, raw_amount = (cell.strip() for cell in cells)
        row_errors = []
        try:
            referral_id = uuid.UUID(raw_id)
        except ValueError:
            referral_id = None
            row_errors.append(_("row %(n)d: referral_id: not a referral id.") % {"n": number})
        if line_type not in LineType.values:
            row_errors.append(_("row %(n)d: line_type: unknown line type.") % {"n": number})
        amount = _amount(raw_amount)
        if amount is None:
            row_errors.append(_("row %(n)d: amount: not an amount in CNY with at most two decimals.") % {"n": number})
        if row_errors:
            errors.extend(row_errors)
        else:
            rows.append((number, referral_id, line_type, amount))
    known = set(
        Referral.objects.filter(partner_id=partner_id, pk__in={row[1] for row in rows}).values_list("pk", flat=True)
    )
    for number, referral_id, *_rest in rows:
        if referral_id not in known:
            errors.append(_("row %(n)d: referral_id: no referral of this partner has that id.") % {"n": number})
    if errors:
        errors.sort(key=_row_number)
        more = len(errors) - MAX_MESSAGES
        shown = errors[:MAX_MESSAGES] + ([_("… and %(n)d more.") % {"n": more}] if more > 0 else [])
        raise ValidationError({"file": shown})
    if not rows:
        raise ValidationError({"file": [_("The file has no rows after the header.")]})
    figures: dict[Key, Decimal] = defaultdict(lambda: Decimal("0.00"))
    for _number, referral_id, line_type, amount in rows:
        figures[(referral_id, line_type)] += amount
    if any(abs(value) >= LIMIT for value in figures.values()) or abs(sum(figures.values())) >= TOTAL_LIMIT:
        raise ValidationError({"file": [_("The amounts add up to more than a statement can hold.")]})
    return dict(figures), len(rows)


def _row_number(message: str) -> int:
    digits = "".join(ch for ch in message.split(":", 1)[0] if ch.isdigit())
    return int(digits or 0)


def _amount(raw: str) -> Decimal | None:
    """A plain decimal in ASCII digits with at most two places (no exponents, separators or
    full-width digits): what a partner's system writes, and nothing a spreadsheet guessed."""
    if not AMOUNT.match(raw):
        return None
    value = Decimal(raw)
    return value.quantize(Decimal("0.01")) if abs(value) < LIMIT else None


def our_figures(statement: Statement) -> dict[Key, Decimal]:
    figures: dict[Key, Decimal] = defaultdict(lambda: Decimal("0.00"))
    for referral_id, line_type, amount in statement.lines.values_list("referral_id", "line_type", "amount").iterator(
        chunk_size=5000
    ):
        figures[(referral_id, line_type)] += amount
    return dict(figures)


@transaction.atomic
def statement_reconcile(*, statement: Statement, user, content: bytes, filename: str = "") -> Reconciliation:
    theirs, row_count = parse_partner_csv(content, partner_id=statement.partner_id)
    statement = Statement.objects.select_for_update().get(pk=statement.pk)
    ours = our_figures(statement)
    items = []
    for key in sorted(ours.keys() | theirs.keys(), key=lambda k: (k[1], str(k[0]))):
        mine, their = ours.get(key), theirs.get(key)
        if mine is not None and their is not None:
            if mine == their:
                continue
            kind = ReconciliationItem.Kind.AMOUNT_DIFFERS
        elif mine is not None:
            kind = ReconciliationItem.Kind.ONLY_OURS
        else:
            kind = ReconciliationItem.Kind.ONLY_THEIRS
        difference = (their or Decimal("0")) - (mine or Decimal("0"))
        items.append(
            ReconciliationItem(
                kind=kind, referral_id=key[0], line_type=key[1], ours=mine, theirs=their, difference=difference
            )
        )
    ours_total = sum(ours.values(), Decimal("0.00"))
    theirs_total = sum(theirs.values(), Decimal("0.00"))
    reconciliation = Reconciliation.objects.create(
        statement=statement, uploaded_by=user, filename=(filename or "")[:200],
        sha256=hashlib.sha256(content).hexdigest(), row_count=row_count,
        statement_computed_at=statement.computed_at, ours_total=ours_total, theirs_total=theirs_total,
        only_ours=sum(i.kind == ReconciliationItem.Kind.ONLY_OURS for i in items),
        only_theirs=sum(i.kind == ReconciliationItem.Kind.ONLY_THEIRS for i in items),
        amounts_differ=sum(i.kind == ReconciliationItem.Kind.AMOUNT_DIFFERS for i in items),
        total_difference=theirs_total - ours_total,
    )  # fmt: skip
    for item in items:
        item.reconciliation = reconciliation
    ReconciliationItem.objects.bulk_create(items, batch_size=2000)
    return reconciliation
