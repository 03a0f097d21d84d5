"""Statement exports: CSV, XLSX and a PDF in Chinese.

CSV and XLSX carry a header block (partner, period, status), one row per line and the totals.
Every text cell is made safe against formula injection (OWASP "CSV injection"): a value starting
with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'``. Amounts are never
text: the CSV holds decimal strings we format ourselves (``-30.00``), the XLSX real numbers.

The PDF is rendered by WeasyPrint from ``templates/settlements/statement_pdf.html`` with the
system's CJK font (fontconfig); it never fetches anything from the network. When WeasyPrint's
system libraries (Pango) or a CJK font are missing, :class:`ExportUnavailable` says what to
install (the API answers 503).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from django.template.loader import render_to_string
from django.utils import timezone, translation

from settlements.models import LineType, Statement, StatementLine

FORMATS = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}

SHANGHAI = ZoneInfo("Asia/Shanghai")
CENT = Decimal("0.01")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
LINE_COLUMNS = ["line_type", "类型", "referral_id", "loan_id", "occurred_at", "late", "basis", "vat_rate", "amount"]
AMOUNT_FORMAT = "#,##0.00"
RATE_FORMAT = "0.00%"
PDF_LANGUAGE = "zh-hans"
PANGO_HINT = "apt-get install libpango-1.0-0 libpangoft2-1.0-0"
FONT_HINT = "apt-get install fonts-wqy-microhei"


class ExportUnavailable(RuntimeError):
    """This machine cannot produce the format (a system library or font is missing)."""


def export_statement(statement: Statement, fmt: str) -> tuple[bytes, str]:
    """The statement as ``fmt`` (a key of :data:`FORMATS`) and the file name to offer."""
    builders = {"csv": statement_csv, "xlsx": statement_xlsx, "pdf": statement_pdf}
    if fmt not in builders:
        raise ValueError(f"unknown export format {fmt!r}")
    return builders[fmt](statement), filename(statement, fmt)


def filename(statement: Statement, fmt: str) -> str:
    code = re.sub(r"[^A-Za-z0-9_]", "_", statement.partner.code)
    return f"statement-{code}-{statement.period}.{fmt}"


# --- cells --------------------------------------------------------------------------------------
def safe_text(value) -> str:
    """Text that a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_PREFIXES) else text


def money(value: Decimal) -> Decimal:
    """Two places, and never ``-0.00``."""
    amount = Decimal(value).quantize(CENT, ROUND_HALF_UP)
    return amount if amount else CENT * 0


def local_time(value) -> str:
    return timezone.localtime(value, SHANGHAI).strftime("%Y-%m-%d %H:%M") if value else ""


def _lines(statement: Statement) -> Iterator[StatementLine]:
    """The statement's lines in one query, streamed (a statement may hold many thousands)."""
    return (
        StatementLine.objects.filter(statement_id=statement.pk)
        .select_related("loan")
        .order_by("line_type", "occurred_at", "id")
        .iterator(chunk_size=2000)
    )


def _header(statement: Statement) -> list[list[str]]:
    return [
        ["partner_code", safe_text(statement.partner.code)],
        ["partner_name", safe_text(statement.partner.name)],
        ["period", safe_text(statement.period)],
        ["status", safe_text(statement.status), safe_text(statement.get_status_display())],
    ]


def _line_texts(line: StatementLine) -> list[str]:
    """The text cells of a line, safe, in :data:`LINE_COLUMNS` order (without rate and amount)."""
    return [
        safe_text(line.line_type),
        safe_text(LineType(line.line_type).label if line.line_type in LineType.values else line.line_type),
        safe_text(line.referral_id),
        safe_text(line.loan.loan_id if line.loan else ""),
        safe_text(local_time(line.occurred_at)),
        "yes" if line.late else "no",
        safe_text(line.basis),
    ]


def _totals(statement: Statement) -> list[tuple[str, Decimal]]:
    return [("net", money(statement.net)), ("vat", money(statement.vat)), ("gross", money(statement.gross))]


# --- CSV ----------------------------------------------------------------------------------------
def statement_csv(statement: Statement) -> bytes:
    """UTF-8 with a BOM, so that Excel shows the Chinese."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerows(_header(statement))
    writer.writerow([])
    writer.writerow(LINE_COLUMNS)
    for line in _lines(statement):
        writer.writerow([*_line_texts(line), str(line.vat_rate), str(money(line.amount))])
    writer.writerow([])
    padding = [""] * (len(LINE_COLUMNS) - 2)
    for label, amount in _totals(statement):
        writer.writerow([label, *padding, str(amount)])
    return out.getvalue().encode("utf-8-sig")


# --- XLSX ---------------------------------------------------------------------------------------
def statement_xlsx(statement: Statement) -> bytes:
    """One sheet, written in openpyxl's write-only mode (rows are streamed, not kept)."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Font

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(title=statement.period)
    bold = Font(bold=True)

    def text(value: str, *, strong: bool = False) -> WriteOnlyCell:
        cell = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("", value))
        if strong:
            cell.font = bold
        return cell

    def number(value: Decimal, number_format: str, *, strong: bool = False) -> WriteOnlyCell:
        cell = WriteOnlyCell(sheet, value=value)
        cell.number_format = number_format
        if strong:
            cell.font = bold
        return cell

    for row in _header(statement):
        sheet.append([text(row[0], strong=True), *(text(value) for value in row[1:])])
    sheet.append([])
    sheet.append([text(title, strong=True) for title in LINE_COLUMNS])
    for line in _lines(statement):
        sheet.append(
            [
                *(text(value) for value in _line_texts(line)),
                number(line.vat_rate, RATE_FORMAT),
                number(money(line.amount), AMOUNT_FORMAT),
            ]
        )
    sheet.append([])
    padding = [None] * (len(LINE_COLUMNS) - 2)
    for label, amount in _totals(statement):
        sheet.append([text(label, strong=True), *padding, number(amount, AMOUNT_FORMAT, strong=True)])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


# --- PDF ----------------------------------------------------------------------------------------
_fonts_found = False


def _cjk_fonts() -> str:
    """What ``fc-list :lang=zh`` prints (empty without fontconfig or a Chinese font)."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return ""
    try:
        result = subprocess.run(  # noqa: S603 (fixed arguments, no shell)
            [fc_list, ":lang=zh", "family"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip()


def pdf_unavailable_reason() -> str | None:
    """Why this machine cannot render PDF statements, or ``None`` when it can."""
    global _fonts_found
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as error:
        return (
            f"PDF statements need WeasyPrint and its system libraries ({error}): "
            f"pip install -r requirements.txt; {PANGO_HINT}"
        )
    if not _fonts_found:
        if not _cjk_fonts():
            found_by = "`fc-list :lang=zh` finds none" if shutil.which("fc-list") else "fontconfig is missing"
            return f"PDF statements need a Chinese (CJK) font and {found_by}: {FONT_HINT} fontconfig"
        _fonts_found = True  # once found, not looked for again; a missing one is looked for each time
    return None


def _person(user) -> str:
    return (user.get_full_name() or user.get_username()) if user else ""


def _pdf_context(statement: Statement) -> dict:
    groups = []
    for line_type, lines in itertools.groupby(_lines(statement), key=lambda line: line.line_type):
        rows = [
            {
                "occurred_at": local_time(line.occurred_at),
                "referral_id": str(line.referral_id),
                "loan_id": line.loan.loan_id if line.loan else "",
                "basis": line.basis,
                "late": line.late,
                "vat_rate": f"{line.vat_rate * 100:.2f}%",
                "amount": money(line.amount),
            }
            for line in lines
        ]
        groups.append(
            {
                "code": line_type,
                "label": LineType(line_type).label if line_type in LineType.values else line_type,
                "rows": rows,
                "subtotal": money(sum((row["amount"] for row in rows), Decimal(0))),
            }
        )
    return {
        "statement": statement,
        "partner": statement.partner,
        "status": statement.get_status_display(),
        "groups": groups,
        "net": money(statement.net),
        "vat": money(statement.vat),
        "gross": money(statement.gross),
        "credit_note": statement.gross < 0,
        "computed_by": _person(statement.computed_by),
        "computed_at": local_time(statement.computed_at),
        "submitted_by": _person(statement.submitted_by),
        "submitted_at": local_time(statement.submitted_at),
        "approved_by": _person(statement.approved_by),
        "approved_at": local_time(statement.approved_at),
        "generated_at": local_time(timezone.now()),
    }


def statement_html(statement: Statement) -> str:
    """The PDF's HTML, in Chinese whatever the request's language."""
    with translation.override(PDF_LANGUAGE):
        return render_to_string("settlements/statement_pdf.html", _pdf_context(statement))


def no_fetching():
    """A WeasyPrint URL fetcher that refuses every URL: a statement is self-contained, and
    rendering one never reads a file or goes online (a refused URL is logged and left out)."""
    from weasyprint.urls import URLFetcher

    class NoFetching(URLFetcher):
        def fetch(self, url, headers=None):
            raise ValueError(f"fetching {url} is not allowed while rendering a statement")

    return NoFetching()


def statement_pdf(statement: Statement) -> bytes:
    reason = pdf_unavailable_reason()
    if reason:
        raise ExportUnavailable(reason)
    from weasyprint import HTML

    return HTML(string=statement_html(statement), base_url=None, url_fetcher=no_fetching()).write_pdf()
