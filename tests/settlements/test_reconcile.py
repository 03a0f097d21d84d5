"""Reconciling a statement with the partner's own figures through the API: ``POST`` a CSV
(``referral_id,line_type,amount``) to ``/api/v1/statements/{id}/reconcile/``, ``GET`` the same URL
for the statement's reconciliations. Differences are matched on ``(referral_id, line_type)``; a
file with any bad row is refused whole (400 naming ``file``, one message per bad row) and nothing
is stored; approving with unresolved differences needs a note.

The statement is settlement-rules.md's worked example, made through the real pipeline.
"""

from __future__ import annotations

import hashlib
import uuid
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from settlements.models import Reconciliation, ReconciliationItem, Statement
from settlements.services.statements import statement_compute
from tests.factories import PartnerFactory, make_contract
from tests.settlements.builders import at, submitting

HEADER = "referral_id,line_type,amount"


@pytest.fixture
def november(contract, origination_api, text, partner, side):
    """The worked example's November (see test_worked_example.py)."""
    r1, r2, r3, r4 = submitting(origination_api, text, partner, 4)
    side.accepted(r1, at(2, 9))
    side.accepted(r2, at(2, 10))
    side.accepted(r3, at(3, 9))
    side.accepted(r4, at(3, 15))
    side.returned(r2, at(2, 20))
    side.approved(r1, at(4, 10), "L-R1")
    side.disbursed(r1, at(5, 10), "L-R1", "20000.00")
    side.repaid(r1, at(20, 10), "L-R1", 1, "166.67")
    side.approved(r3, at(4, 11), "L-R3")
    side.disbursed(r3, at(5, 11), "L-R3", "8333.33")
    side.overdue(r3, at(25, 9), "L-R3", 31)
    return r1, r2, r3, r4


@pytest.fixture
def statement(november, partner, finance_user) -> Statement:
    statement, computed = statement_compute(partner=partner, period="2026-11", user=finance_user)
    assert computed
    assert (statement.net, statement.line_count) == (Decimal("326.67"), 11)
    return statement


@pytest.fixture
def ours(november) -> list[tuple[str, str, str]]:
    """Our lines, as the partner would list them if they agree with every one."""
    r1, r2, r3, r4 = (str(r.pk) for r in november)
    return [
        (r1, "application_fee", "30.00"), (r2, "application_fee", "30.00"), (r3, "application_fee", "25.00"),
        (r4, "application_fee", "25.00"), (r2, "clawback_returned", "-30.00"), (r1, "approval_fee", "5.00"),
        (r3, "approval_fee", "5.00"), (r1, "disbursement_fee", "200.00"), (r3, "disbursement_fee", "83.33"),
        (r1, "interest_share", "41.67"), (r3, "clawback_fpd", "-88.33"),
    ]  # fmt: skip


def client_for(api, user):
    client = api(user)
    client.defaults["HTTP_ACCEPT_LANGUAGE"] = "en"  # messages are asserted in English
    return client


@pytest.fixture
def finance(api, finance_user):
    return client_for(api, finance_user)


@pytest.fixture
def approver(api, second_finance_user):
    return client_for(api, second_finance_user)


def csv_of(rows, *, header: str = HEADER, bom: bool = False) -> bytes:
    text = "\r\n".join([header, *(",".join(row) for row in rows)]) + "\r\n"
    return ("\ufeff" if bom else "").encode() + text.encode("utf-8")


def url(statement) -> str:
    return f"/api/v1/statements/{statement.pk}/reconcile/"


def upload(client, statement, content: bytes, name: str = "partner-2026-11.csv"):
    file = SimpleUploadedFile(name, content, content_type="text/csv")
    return client.post(url(statement), {"file": file}, format="multipart")


def stored() -> tuple[int, int]:
    return Reconciliation.objects.count(), ReconciliationItem.objects.count()


# --- matching ------------------------------------------------------------------------------------
def test_an_exact_match_has_no_differences(finance, statement, ours):
    content = csv_of(ours)
    response = upload(finance, statement, content)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["only_ours"], body["only_theirs"], body["amounts_differ"]) == (0, 0, 0)
    assert body["items"] == []
    assert (body["ours_total"], body["theirs_total"], body["total_difference"]) == ("326.67", "326.67", "0.00")
    assert (body["row_count"], body["filename"], body["uploaded_by"]) == (11, "partner-2026-11.csv", "finance")
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["statement"] == str(statement.pk)

    listed = finance.get(url(statement))
    assert listed.status_code == 200
    assert [row["id"] for row in listed.json()] == [body["id"]]
    assert listed.json()[0]["total_difference"] == "0.00"


def test_each_kind_of_difference_is_listed_with_the_total_difference(finance, statement, ours, november):
    r3, r4 = str(november[2].pk), str(november[3].pk)
    theirs = [row for row in ours if row != (r4, "application_fee", "25.00")]  # only ours
    theirs.append((r4, "approval_fee", "5.00"))  # only theirs: a referral of this partner, a line we do not have
    theirs = [(r3, "disbursement_fee", "83.34") if row[:2] == (r3, "disbursement_fee") else row for row in theirs]

    response = upload(finance, statement, csv_of(theirs))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["only_ours"], body["only_theirs"], body["amounts_differ"]) == (1, 1, 1)
    items = {(i["kind"], i["referral"], i["line_type"], i["ours"], i["theirs"], i["difference"]) for i in body["items"]}
    assert items == {
        ("only_ours", r4, "application_fee", "25.00", None, "-25.00"),
        ("only_theirs", r4, "approval_fee", None, "5.00", "5.00"),
        ("amount_differs", r3, "disbursement_fee", "83.33", "83.34", "0.01"),
    }
    # Theirs minus ours: −25.00 + 5.00 + 0.01.
    assert (body["ours_total"], body["theirs_total"], body["total_difference"]) == ("326.67", "306.68", "-19.99")
    assert sum(Decimal(i["difference"]) for i in body["items"]) == Decimal("-19.99")

    reconciliation = Reconciliation.objects.get()
    assert (reconciliation.differences, reconciliation.items.count()) == (3, 3)


def test_several_rows_for_one_key_are_added_up(finance, statement, ours, november):
    r1 = str(november[0].pk)
    split = [row for row in ours if row[:2] != (r1, "interest_share")]
    split += [(r1, "interest_share", "20.00"), (r1, "interest_share", "21.67")]  # one row per repayment share
    split += [(r1, "approval_fee", "0.00")]
    response = upload(finance, statement, csv_of(split))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["row_count"], body["items"], body["total_difference"]) == (13, [], "0.00")

    # Added up, a key that differs is one difference, not one per row.
    split += [(r1, "interest_share", "1.00")]
    body = upload(finance, statement, csv_of(split)).json()
    assert [(i["kind"], i["line_type"], i["ours"], i["theirs"]) for i in body["items"]] == [
        ("amount_differs", "interest_share", "41.67", "42.67")
    ]
    assert body["total_difference"] == "1.00"


def test_a_bom_prefixed_utf8_file_with_spaces_and_blank_lines_is_read(finance, statement, ours):
    content = "\ufeff" + " referral_id , line_type , amount \n\n" + "\n".join(",".join(r) for r in ours) + "\n\n"
    response = upload(finance, statement, content.encode("utf-8"))
    assert response.status_code == 201, response.content
    assert (response.json()["row_count"], response.json()["items"]) == (11, [])
    assert upload(finance, statement, csv_of(ours, bom=True)).json()["total_difference"] == "0.00"


def test_the_list_is_newest_first_and_each_keeps_its_items(finance, statement, ours, november):
    first = upload(finance, statement, csv_of(ours)).json()
    second = upload(finance, statement, csv_of(ours[1:])).json()
    listed = finance.get(url(statement)).json()
    assert [row["id"] for row in listed] == [second["id"], first["id"]]
    assert [len(row["items"]) for row in listed] == [1, 0]


# --- bad files: 400 naming ``file``, one message per bad row, nothing stored ----------------------
@pytest.fixture
def other_partners_referral(origination_api, text, partnership_manager, compliance_officer):
    other = PartnerFactory(code="PARTNER_B", name="乙银行股份有限公司")
    make_contract(other, drafter=partnership_manager, approver=compliance_officer)
    return submitting(origination_api, text, other, 1)[0]


AMOUNT = "amount: not an amount in CNY with at most two decimals."
BAD_ROWS = {
    "amount abc": (("{r1}", "application_fee", "abc"), AMOUNT),
    "amount with three decimals": (("{r1}", "application_fee", "1.234"), AMOUNT),
    "amount NaN": (("{r1}", "application_fee", "NaN"), AMOUNT),
    "amount Infinity": (("{r1}", "application_fee", "Infinity"), AMOUNT),
    "amount 1e400": (("{r1}", "application_fee", "1e400"), AMOUNT),
    "amount 1e12": (("{r1}", "application_fee", "1000000000000"), AMOUNT),
    "amount empty": (("{r1}", "application_fee", ""), AMOUNT),
    "unknown line type": (("{r1}", "referral_fee", "30.00"), "line_type: unknown line type."),
    "line type in capitals": (("{r1}", "APPLICATION_FEE", "30.00"), "line_type: unknown line type."),
    "malformed referral id": (("R1", "application_fee", "30.00"), "referral_id: not a referral id."),
    "empty referral id": (("", "application_fee", "30.00"), "referral_id: not a referral id."),
    "unknown referral": (
        (str(uuid.uuid4()), "application_fee", "30.00"),
        "referral_id: no referral of this partner has that id.",
    ),
    "another partner's referral": (
        ("{other}", "application_fee", "30.00"),
        "referral_id: no referral of this partner has that id.",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_refuses_the_whole_file_naming_the_row(finance, statement, ours, other_partners_referral, case):
    r1 = ours[0][0]
    row, message = BAD_ROWS[case]
    bad = tuple(cell.format(r1=r1, other=other_partners_referral.pk) for cell in row)
    content = csv_of([ours[0], ours[1], bad, ours[2]])  # the bad row is row 4 (the header is row 1)
    before = stored()
    response = upload(finance, statement, content)
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["file"]
    assert response.json()["file"] == [f"row 4: {message}"]
    assert stored() == before


def test_every_bad_row_is_named_in_row_order(finance, statement, ours):
    r1 = ours[0][0]
    rows = [("nope", "approval_fee", "1.234"), ours[0], (r1, "mystery", "1"), (r1, "application_fee")]
    response = upload(finance, statement, csv_of(rows))
    assert response.status_code == 400
    assert response.json() == {
        "file": [
            "row 2: referral_id: not a referral id.",
            "row 2: amount: not an amount in CNY with at most two decimals.",
            "row 4: line_type: unknown line type.",
            "row 5: expected 3 columns, found 2.",
        ]
    }
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"referral,type,amount\r\nx,y,1\r\n", "The first row must be exactly", id="wrong header"),
        pytest.param(b"amount,line_type,referral_id\r\n", "The first row must be exactly", id="columns reordered"),
        pytest.param(b"referral_id,line_type,amount,note\r\n", "The first row must be exactly", id="extra column"),
        pytest.param(b"referral_id;line_type;amount\r\n", "The first row must be exactly", id="semicolons"),
        pytest.param("referral_id,line_type,金额\r\n".encode("gbk"), "not UTF-8", id="not utf-8"),
        pytest.param(HEADER.encode() + b"\r\n", "no rows after the header", id="only the header"),
        pytest.param(HEADER.encode() + b"\r\n\r\n,,\r\n", "no rows after the header", id="header and blank rows"),
        pytest.param(b"\n", "The first row must be exactly", id="one empty line"),
        pytest.param(b"", "empty", id="empty file"),
    ],
)
def test_a_file_that_is_not_the_agreed_csv_is_refused(finance, statement, content, message):
    response = upload(finance, statement, content)
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["file"]
    assert message in " ".join(response.json()["file"])
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    "row",
    [lambda r: (r, "application_fee"), lambda r: (r, "application_fee", "30.00", "x")],
    ids=["2 cells", "4 cells"],
)
def test_a_row_with_the_wrong_number_of_cells_is_named(finance, statement, ours, row):
    response = upload(finance, statement, csv_of([ours[0], row(ours[0][0])]))
    assert response.status_code == 400
    found = 2 if len(row("x")) == 2 else 4
    assert response.json() == {"file": [f"row 3: expected 3 columns, found {found}."]}
    assert stored() == (0, 0)


def test_non_utf8_rows_are_refused(finance, statement, ours):
    content = csv_of(ours[:2]) + f"{ours[0][0]},application_fee,三十\r\n".encode("gb18030")
    response = upload(finance, statement, content)
    assert response.status_code == 400
    assert response.json() == {"file": ["The file is not UTF-8 text."]}
    assert stored() == (0, 0)


def test_no_file_is_a_400_naming_file(finance, statement):
    response = finance.post(url(statement), {}, format="multipart")
    assert response.status_code == 400
    assert list(response.json()) == ["file"]
    assert stored() == (0, 0)


def test_a_huge_cell_is_a_400_not_a_crash(finance, statement, ours):
    content = csv_of([ours[0], ("x" * 200_000, "application_fee", "1.00")])
    response = upload(finance, statement, content)
    assert response.status_code == 400
    assert list(response.json()) == ["file"]
    assert stored() == (0, 0)


def test_rows_that_add_up_past_what_can_be_stored_are_a_400_not_a_crash(finance, statement, ours):
    row = (ours[0][0], "application_fee", "999999999999.99")  # each row alone is a valid amount
    response = upload(finance, statement, csv_of([row, row]))
    assert response.status_code == 400
    assert list(response.json()) == ["file"]
    assert stored() == (0, 0)


# --- approving after a reconciliation --------------------------------------------------------------
def submit(client, statement):
    response = client.post(f"/api/v1/statements/{statement.pk}/submit/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "under_review"


def approve(client, statement, note=None):
    return client.post(
        f"/api/v1/statements/{statement.pk}/approve/", {} if note is None else {"note": note}, format="json"
    )


def test_differences_need_a_note_to_approve(finance, approver, statement, ours):
    assert upload(finance, statement, csv_of(ours[1:])).status_code == 201  # one line only ours
    submit(finance, statement)

    for note in (None, "", "   "):
        refused = approve(approver, statement, note)
        assert refused.status_code == 400, refused.content
        assert list(refused.json()) == ["note"]
        assert "1 differences" in refused.json()["note"][0]
        statement.refresh_from_db()
        assert (statement.status, statement.approved_at) == (Statement.Status.UNDER_REVIEW, None)

    note = "R1's application fee is on the partner's December file; agreed by phone with 甲 finance."
    response = approve(approver, statement, note)
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["approved_by"], body["approval_note"]) == ("approved", "finance2", note)
    assert body["transitions"][-1]["note"] == note
    statement.refresh_from_db()
    assert (statement.status, statement.approval_note) == (Statement.Status.APPROVED, note)


def test_an_exact_match_needs_no_note(finance, approver, statement, ours):
    assert upload(finance, statement, csv_of(ours)).status_code == 201
    submit(finance, statement)
    response = approve(approver, statement)
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["approval_note"]) == ("approved", "")


def test_the_latest_reconciliation_decides(finance, approver, statement, ours):
    assert upload(finance, statement, csv_of(ours[1:])).status_code == 201
    assert upload(finance, statement, csv_of(ours)).status_code == 201  # the partner corrected their file
    submit(finance, statement)
    assert approve(approver, statement).status_code == 200


def test_a_statement_recomputed_after_the_reconciliation_needs_a_note_again(
    finance, approver, statement, ours, partner, finance_user
):
    assert upload(finance, statement, csv_of(ours)).status_code == 201
    again, computed = statement_compute(partner=partner, period="2026-11", user=finance_user)
    assert computed
    assert again.net == statement.net  # the same lines, but not the ones the partner's file was checked against
    submit(finance, statement)

    refused = approve(approver, statement)
    assert refused.status_code == 400, refused.content
    assert list(refused.json()) == ["note"]
    assert "recomputed" in refused.json()["note"][0]
    statement.refresh_from_db()
    assert statement.status == Statement.Status.UNDER_REVIEW

    assert approve(approver, statement, "Recomputed to pick up nothing new; lines unchanged.").status_code == 200


# --- who may ---------------------------------------------------------------------------------------
def test_outsiders_may_neither_reconcile_nor_list(api, outsider, statement, ours):
    client = client_for(api, outsider)
    assert upload(client, statement, csv_of(ours)).status_code == 403
    assert client.get(url(statement)).status_code == 403
    assert stored() == (0, 0)


def test_auditors_may_list_but_not_reconcile(api, auditor, finance, statement, ours):
    client = client_for(api, auditor)
    assert upload(client, statement, csv_of(ours)).status_code == 403
    assert stored() == (0, 0)

    made = upload(finance, statement, csv_of(ours[1:])).json()
    listed = client.get(url(statement))
    assert listed.status_code == 200
    assert [(row["id"], row["only_ours"]) for row in listed.json()] == [(made["id"], 1)]
