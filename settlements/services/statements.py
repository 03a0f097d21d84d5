"""Computing a partner's statement for a month, and moving it through its lifecycle.

Computing replaces a draft's lines with what the rules give now (so re-running gives identical
results), never touches a statement that is under review, disputed or approved, and picks up
"late" lines: events of earlier months whose statements were already approved, which land in the
first month after theirs that is still open.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from decimal import Decimal

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from config.money import round_money
from partners.models import Partner
from settlements import periods
from settlements.models import Statement, StatementLine, StatementTransition
from settlements.rules import RULES, Context, Line, Terms

BATCH = 2000


def compute_lines(partner: Partner, window: periods.Window) -> Iterator[Line]:
    """Every non-zero line the rules give for events inside ``window``."""
    ctx = Context(partner=partner, window=window)
    for rule in RULES:
        for line in rule.lines(ctx):
            if line.amount:
                yield line


def late_window(partner: Partner, period: str) -> periods.Window | None:
    """The approved months right before ``period`` (no open month between): their stragglers are
    late lines of ``period``. Older months behind an open one belong to that open month."""
    frozen = set(
        Statement.objects.filter(partner=partner, period__lt=period, approved_at__isnull=False).values_list(
            "period", flat=True
        )
    )
    first = None
    month = periods.shift(period, -1)
    while month in frozen:
        first, month = month, periods.shift(month, -1)
    return periods.window(first, periods.shift(period, -1)) if first else None


def vat_of(groups: dict[Decimal, Decimal]) -> Decimal:
    """Σ over VAT-rate groups of round_half_up(group net × rate)."""
    return sum((round_money(net * rate) for rate, net in groups.items()), Decimal("0.00"))


def _retotal(statement: Statement) -> None:
    groups = {
        row["vat_rate"]: row["net"]
        for row in statement.lines.values("vat_rate").order_by("vat_rate").annotate(net=Sum("amount"))
    }
    statement.net = sum(groups.values(), Decimal("0.00"))
    statement.vat = vat_of(groups)
    statement.gross = statement.net + statement.vat
    statement.line_count = statement.lines.count()
    statement.save(update_fields=["net", "vat", "gross", "line_count"])


def _batches(lines: Iterable[tuple[Line, bool]]) -> Iterator[list[tuple[Line, bool]]]:
    batch: list[tuple[Line, bool]] = []
    for item in lines:
        batch.append(item)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _lock(partner: Partner, period: str, *, user, run) -> Statement:
    defaults = {"computed_by": user, "computed_at": timezone.now(), "run": run}
    try:
        with transaction.atomic():
            Statement.objects.get_or_create(partner=partner, period=period, defaults=defaults)
    except IntegrityError:  # another run created it at the same moment
        pass
    return Statement.objects.select_for_update().get(partner=partner, period=period)


@transaction.atomic
def statement_compute(*, partner: Partner, period: str, user, run=None) -> tuple[Statement, bool]:
    """(Re)compute the partner's draft for ``period``. Returns ``(statement, computed)``;
    ``computed`` is False when the statement is no longer a draft and was left as it is."""
    periods.parse(period)
    statement = _lock(partner, period, user=user, run=run)
    if statement.status != Statement.Status.DRAFT:
        return statement, False
    statement.lines.all().delete()

    def candidates() -> Iterator[tuple[Line, bool]]:
        yield from ((line, False) for line in compute_lines(partner, periods.window(period)))
        late = late_window(partner, period)
        if late is not None:
            yield from ((line, True) for line in compute_lines(partner, late))

    groups: dict[Decimal, Decimal] = defaultdict(lambda: Decimal("0.00"))
    count, touched = 0, set()
    terms = {}
    for batch in _batches(candidates()):
        elsewhere = dict(
            StatementLine.objects.filter(key__in=[line.key for line, _late in batch]).values_list(
                "key", "statement__status"
            )
        )
        moved = [key for key, status in elsewhere.items() if status == Statement.Status.DRAFT]
        if moved:
            # An event's time moved into this month (an earlier event arrived late): the line
            # moves here from the other month's draft, which is re-totalled below.
            touched.update(
                StatementLine.objects.filter(key__in=moved).values_list("statement_id", flat=True).distinct()
            )
            StatementLine.objects.filter(key__in=moved).delete()
        rows = []
        for line, late in batch:
            if elsewhere.get(line.key, Statement.Status.DRAFT) != Statement.Status.DRAFT:
                continue  # already on a statement under review or approved: counted once, there
            if line.contract_id not in terms:
                terms[line.contract_id] = _vat_rate(partner, line.contract_id)
            rate = terms[line.contract_id]
            groups[rate] += line.amount
            rows.append(line.model(statement_id=statement.pk, vat_rate=rate, late=late))
        StatementLine.objects.bulk_create(rows)
        count += len(rows)

    statement.net = sum(groups.values(), Decimal("0.00"))
    statement.vat = vat_of(groups)
    statement.gross = statement.net + statement.vat
    statement.line_count = count
    statement.computed_by, statement.computed_at, statement.run = user, timezone.now(), run
    statement.save()
    for other in Statement.objects.filter(pk__in=touched - {statement.pk}).select_for_update():
        _retotal(other)
    return statement, True


def _vat_rate(partner: Partner, contract_id: int) -> Decimal:
    """The contract version's VAT rate, read the way the fee rules read every term."""
    return Terms.of(partner.contracts.get(pk=contract_id)).vat_rate


# --- lifecycle ---------------------------------------------------------------------------------
def _record(statement: Statement, source: str, user, note: str = "") -> None:
    StatementTransition.objects.create(statement=statement, source=source, target=statement.status, by=user, note=note)


def _locked(statement: Statement) -> Statement:
    return Statement.objects.select_for_update().select_related("partner").get(pk=statement.pk)


def _require(statement: Statement, *allowed: str) -> None:
    if statement.status not in allowed:
        raise ValidationError(
            {
                "status": [
                    _("This statement is %(status)s; that step is not possible now.") % {"status": statement.status}
                ]
            }
        )


@transaction.atomic
def statement_submit(*, statement: Statement, user) -> Statement:
    statement = _locked(statement)
    _require(statement, Statement.Status.DRAFT)
    statement.submit()
    statement.submitted_by, statement.submitted_at = user, timezone.now()
    statement.save()
    _record(statement, Statement.Status.DRAFT, user)
    return statement


@transaction.atomic
def statement_send_back(*, statement: Statement, user, reason: str) -> Statement:
    if not (reason or "").strip():
        raise ValidationError({"reason": [_("Say what must be corrected.")]})
    statement = _locked(statement)
    _require(statement, Statement.Status.UNDER_REVIEW)
    statement.send_back()
    statement.save()
    _record(statement, Statement.Status.UNDER_REVIEW, user, reason.strip())
    return statement


def unresolved_differences(statement: Statement) -> str:
    """Why approving needs a note: the latest reconciliation found differences, or was made
    against lines the statement no longer has. Empty when there is nothing unresolved."""
    latest = statement.reconciliations.order_by("-uploaded_at").first()
    if latest is None:
        return ""
    if latest.statement_computed_at != statement.computed_at:
        return _("The statement was recomputed after the last reconciliation.")
    if latest.differences:
        return _("The last reconciliation found %(n)d differences (total %(total)s).") % {
            "n": latest.differences,
            "total": latest.total_difference,
        }
    return ""


@transaction.atomic
def statement_approve(*, statement: Statement, user, note: str = "") -> Statement:
    """Four-eyes: whoever computed or submitted the statement cannot approve it."""
    statement = _locked(statement)
    _require(statement, Statement.Status.UNDER_REVIEW)
    if user.pk in (statement.computed_by_id, statement.submitted_by_id):
        raise PermissionDenied(_("Four-eyes: the person who ran or submitted a statement cannot approve it."))
    note = (note or "").strip()
    unresolved = unresolved_differences(statement)
    if unresolved and not note:
        raise ValidationError({"note": [unresolved + " " + _("Approving needs a note saying why.")]})
    statement.approve()
    statement.approved_by, statement.approved_at, statement.approval_note = user, timezone.now(), note
    statement.save()
    _record(statement, Statement.Status.UNDER_REVIEW, user, note)
    return statement


@transaction.atomic
def statement_issue(*, statement: Statement, user) -> Statement:
    statement = _locked(statement)
    _require(statement, Statement.Status.APPROVED)
    statement.issue()
    statement.issued_at = timezone.now()
    statement.save()
    _record(statement, Statement.Status.APPROVED, user)
    return statement


@transaction.atomic
def statement_mark_paid(*, statement: Statement, user, note: str = "") -> Statement:
    statement = _locked(statement)
    _require(statement, Statement.Status.ISSUED)
    statement.mark_paid()
    statement.paid_at = timezone.now()
    statement.save()
    _record(statement, Statement.Status.ISSUED, user, (note or "").strip())
    return statement


@transaction.atomic
def statement_dispute(*, statement: Statement, user, reason: str) -> Statement:
    if not (reason or "").strip():
        raise ValidationError({"reason": [_("Say what the partner disputes.")]})
    statement = _locked(statement)
    source = statement.status
    _require(statement, Statement.Status.UNDER_REVIEW, Statement.Status.APPROVED, Statement.Status.ISSUED)
    statement.dispute()
    statement.save()
    _record(statement, source, user, reason.strip())
    return statement


@transaction.atomic
def statement_resolve(*, statement: Statement, user, note: str) -> Statement:
    """End a dispute: an approved statement goes back to approved/issued unchanged (a correction
    is a line of a later month); one never approved goes back to draft to be corrected."""
    if not (note or "").strip():
        raise ValidationError({"note": [_("Say how the dispute was settled.")]})
    statement = _locked(statement)
    _require(statement, Statement.Status.DISPUTED)
    if statement.frozen:
        statement.resolve()
    else:
        statement.reopen()
    statement.save()
    _record(statement, Statement.Status.DISPUTED, user, note.strip())
    return statement
