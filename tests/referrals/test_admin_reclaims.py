"""The reclaim screens: compliance's review queue (oldest first, bulk approve / reject with one
reason, scan now), each case's page (evidence, every rule checked again, timeline, the partner
notice, the buttons) and the near misses — who may see and do what, that every step goes through
the services and reports their refusals instead of failing, that the pages stay within a fixed
number of queries and never show the borrower in clear."""

from __future__ import annotations

import datetime
import itertools
import re

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import translation

from referrals.admin import reclaims as reclaims_admin
from referrals.models import Dispatch, Loan, Reclaim, ReclaimNearMiss
from referrals.services import dispatch as outbox
from referrals.services.reclaims import reclaim_propose, reclaim_reject, reclaims_scan
from tests.factories import PartnerFactory, UserFactory, make_contract
from tests.settlements.builders import PartnerSide, at, submitting
from tests.signin import TwoFactorClient

RECLAIM_TERMS = {"allowed": True, "min_ontime_installments": 3, "fee": "200.00", "non_solicit_days": 0}
RULE_CODES = ["contract_allows", "loan_open", "ontime_installments", "no_overdue", "non_solicit_elapsed", "consent"]
_loan_numbers = itertools.count(1)


# --- helpers --------------------------------------------------------------------------------------
def url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def case_url(reclaim: Reclaim, name: str = "change", *args) -> str:
    return url(f"referrals_reclaim_{name}", reclaim.pk, *args)


def act_url(reclaim: Reclaim, action: str) -> str:
    return case_url(reclaim, "act", action)


QUEUE = "referrals_reclaim_changelist"
NEAR_MISSES = "referrals_reclaimnearmiss_changelist"


def browser(user, language: str = "en") -> TwoFactorClient:
    """A logged-in admin session in English, so the tests read the source strings (one test reads
    the Chinese page). Not the ``client`` fixture: the partner's callbacks use their own client."""
    client = TwoFactorClient(headers={"Accept-Language": language})  # signed in with both factors
    client.force_login(user)
    return client


def messages_of(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def by_testid(html: str, name: str) -> str:
    """The text inside the first element with ``data-testid="name"`` (tags stripped)."""
    match = re.search(rf'data-testid="{re.escape(name)}"[^>]*>(.*?)</', html, re.S)
    assert match, f"no data-testid={name!r} on the page"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def rule_states(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-testid="rule-([a-z_]+)" data-ok="(true|false)"', html))


def queue_rows(html: str) -> list[str]:
    """The loan ids of the queue's rows, in order."""
    body = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', html, re.S)
    return re.findall(r'<th class="field-loan_display"><a href="[^"]+">([^<]+)</a>', body.group(1)) if body else []


def bulk(client: Client, reclaims: list[Reclaim], decision: str, reason: str | None = None, *, query: str = ""):
    """The bulk action from the queue: without ``reason`` the page asking for one, else the decision."""
    data = {"action": f"{decision}_selected", "_selected_action": [str(r.pk) for r in reclaims]}
    if reason is not None:
        data.update({"apply": "yes", "reason": reason})
    return client.post(url(QUEUE) + query, data)


@pytest.fixture(autouse=True)
def _keep_active_language():
    """LocaleMiddleware activates each request's language for the thread: put ours back afterwards."""
    with translation.override(translation.get_language()):
        yield


@pytest.fixture(autouse=True)
def queued(monkeypatch) -> list[int]:
    """Dispatch ids handed to the workers on commit (no broker here)."""
    ids: list[int] = []
    monkeypatch.setattr(outbox, "_enqueue", ids.extend)
    return ids


# --- data -----------------------------------------------------------------------------------------
@pytest.fixture
def partner(db):
    return PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司")


@pytest.fixture
def contract(partner, partnership_manager, compliance_officer):
    return make_contract(partner, drafter=partnership_manager, approver=compliance_officer, reclaim=RECLAIM_TERMS)


@pytest.fixture
def side(partner):
    return PartnerSide(Client(), partner)


def lend(origination_api, text, partner, side, *, ontime: int = 3, overdue: bool = False) -> Loan:
    """A referral accepted in early November, its loan disbursed and ``ontime`` instalments paid on
    (or before) their due dates — the way the partner reports it, through signed callbacks."""
    [referral] = submitting(origination_api, text, partner, 1)
    loan_id = f"LN-{next(_loan_numbers):04d}"
    side.accepted(referral, at(2, 9))
    side.approved(referral, at(3, 10), loan_id)
    side.disbursed(referral, at(4, 10), loan_id, "12000.00")
    for number in range(1, ontime + 1):
        due = datetime.date(2026, 11, 10 + number)
        side.repaid(referral, at(9 + number, 15), loan_id, number, "90.00", due=due, paid=due - datetime.timedelta(1))
    if overdue:
        side.overdue(referral, at(25, 9), loan_id, 5, installment=ontime + 1, due="2026-11-20")
    return Loan.objects.get(partner=partner, loan_id=loan_id)


@pytest.fixture
def world(contract, origination_api, text, partner, side):
    """Three qualifying loans (three candidates, found in this order) and two near misses: one paid
    only two instalments on time, one had an overdue."""
    loans = [lend(origination_api, text, partner, side) for _ in range(3)]
    short = lend(origination_api, text, partner, side, ontime=2)
    late = lend(origination_api, text, partner, side, overdue=True)
    result = reclaims_scan()
    assert (result.candidates, result.near_misses) == (3, 2), result
    cases = [Reclaim.objects.select_related("partner", "loan").get(loan=loan) for loan in loans]
    return {"cases": cases, "short": short, "late": late}


@pytest.fixture
def cases(world) -> list[Reclaim]:
    return world["cases"]


@pytest.fixture
def nobody(db):
    """Staff, but in no role."""
    return UserFactory(username="nobody", is_staff=True)


# --- who may see what, and at what cost -----------------------------------------------------------
def pages(cases: list[Reclaim]) -> dict[str, str]:
    return {
        "queue": url(QUEUE),
        "queue, every status": url(QUEUE) + "?status=all",
        "case": case_url(cases[0]),
        "near misses": url(NEAR_MISSES),
    }


# Whatever the number of cases, repayments or transitions (the queue is paged and counted with a cap).
# (PostgreSQL adds one — page_queries — and may add another: the planner's estimate for a capped count.)
QUERY_BUDGET = {"queue": 10, "queue, every status": 10, "case": 9, "near misses": 8}


@pytest.mark.parametrize("screen", list(QUERY_BUDGET))
def test_every_page_renders_for_compliance_within_a_few_queries(
    screen, cases, compliance_officer, operations_user, page_queries
):
    reclaim_propose(actor=operations_user, reclaim=cases[0], note="还款记录良好，建议回捞")  # a fuller case page
    client = browser(compliance_officer)
    target = pages(cases)[screen]
    client.get(target)  # warm the session and the permission cache; count a normal request
    with page_queries(QUERY_BUDGET[screen]):
        response = client.get(target)
    assert response.status_code == 200


def test_the_case_page_costs_the_same_after_the_whole_journey(
    cases, compliance_officer, operations_user, django_assert_max_num_queries
):
    reclaim = cases[0]
    reclaim_propose(actor=operations_user, reclaim=reclaim, note="建议回捞")
    client = browser(compliance_officer)
    client.post(act_url(reclaim, "approve"), {"approve-reason": "三期按时还款，合同允许回捞"})
    client.get(case_url(reclaim))
    with django_assert_max_num_queries(QUERY_BUDGET["case"]):
        assert client.get(case_url(reclaim)).status_code == 200


@pytest.mark.parametrize("role", ["auditor", "operations_user", "partnership_manager"])
@pytest.mark.parametrize("screen", list(QUERY_BUDGET))
def test_the_other_back_office_roles_read_every_page(request, role, screen, cases):
    response = browser(request.getfixturevalue(role)).get(pages(cases)[screen])
    assert response.status_code == 200


def test_finance_reads_the_queue_and_the_cases_but_not_their_workings(cases, finance_user):
    client = browser(finance_user)
    queue = client.get(url(QUEUE)).content.decode()
    assert queue_rows(queue) == [case.loan.loan_id for case in cases]
    assert 'data-testid="near-miss-link"' not in queue
    assert 'data-testid="scan"' not in queue
    page = client.get(case_url(cases[0])).content.decode()
    assert 'data-testid="reclaim-rules"' in page
    # Sections for the permissions finance does not hold: the timeline, the outbox, the consent.
    for hidden in ('data-testid="reclaim-timeline"', 'data-testid="reclaim-notice"', "consent-status-link"):
        assert hidden not in page
    assert client.get(url(NEAR_MISSES)).status_code == 403


def test_a_case_that_does_not_exist_is_not_found(cases, compliance_officer):
    client = browser(compliance_officer)
    assert client.get(url("referrals_reclaim_change", "not-a-uuid")).status_code == 404
    assert client.get(url("referrals_reclaim_change", "00000000-0000-0000-0000-000000000000")).status_code == 404


@pytest.mark.parametrize("screen", list(QUERY_BUDGET))
def test_someone_outside_the_back_office_is_sent_to_log_in(screen, cases, outsider):
    response = browser(outsider).get(pages(cases)[screen])
    assert response.status_code == 302
    assert response["Location"].startswith(url("login"))


@pytest.mark.parametrize("screen", list(QUERY_BUDGET))
def test_staff_without_a_reclaim_role_are_refused(screen, cases, nobody):
    assert browser(nobody).get(pages(cases)[screen]).status_code == 403


def test_staff_without_a_reclaim_role_may_not_post_anything(cases, nobody):
    client = browser(nobody)
    assert client.post(url("referrals_reclaim_scan")).status_code == 403
    assert client.post(act_url(cases[0], "approve"), {"approve-reason": "理由充分足够"}).status_code == 403
    assert Reclaim.objects.get(pk=cases[0].pk).status == Reclaim.Status.CANDIDATE


# --- the queue ------------------------------------------------------------------------------------
def test_the_queue_lists_the_cases_waiting_for_a_decision_oldest_first(cases, compliance_officer, operations_user):
    reclaim_propose(actor=operations_user, reclaim=cases[1], note="")
    reclaim_reject(actor=compliance_officer, reclaim=cases[2], reason="借款人已投诉，暂不回捞")
    client = browser(compliance_officer)

    page = client.get(url(QUEUE)).content.decode()
    assert queue_rows(page) == [cases[0].loan.loan_id, cases[1].loan.loan_id]  # the rejected one is not waiting
    row = re.search(rf"<tr>.*?{cases[1].loan.loan_id}.*?</tr>", page, re.S).group(0)
    assert "PARTNER_A" in row
    assert 'data-status="under_review"' in row
    assert "Under review" in row
    assert "3 / 3" in row  # paid on time / required, from the evidence
    assert ">operations<" in row  # proposed by

    every = client.get(url(QUEUE) + "?status=all").content.decode()
    assert queue_rows(every) == [case.loan.loan_id for case in cases]
    rejected = client.get(url(QUEUE) + "?status=rejected").content.decode()
    assert queue_rows(rejected) == [cases[2].loan.loan_id]
    assert "借款人已投诉，暂不回捞" in rejected  # the status reason


def test_the_queue_filters_by_partner_and_finds_a_loan_by_its_id(
    cases, compliance_officer, partnership_manager, origination_api, text
):
    other = PartnerFactory(code="PARTNER_B", name="乙银行股份有限公司")
    make_contract(other, drafter=partnership_manager, approver=compliance_officer, reclaim=RECLAIM_TERMS)
    loan_b = lend(origination_api, text, other, PartnerSide(Client(), other))
    assert reclaims_scan().candidates == 1
    client = browser(compliance_officer)

    assert queue_rows(client.get(url(QUEUE)).content.decode()) == [*(c.loan.loan_id for c in cases), loan_b.loan_id]
    only_b = client.get(url(QUEUE) + f"?partner__id__exact={other.pk}").content.decode()
    assert queue_rows(only_b) == [loan_b.loan_id]
    found = client.get(url(QUEUE) + f"?q={cases[1].loan.loan_id}").content.decode()
    assert queue_rows(found) == [cases[1].loan.loan_id]


def test_the_filters_can_show_their_counts(world, compliance_officer):
    client = browser(compliance_officer)
    for target in (url(QUEUE) + "?_facets=True", url(NEAR_MISSES) + "?_facets=True"):
        assert client.get(target).status_code == 200


def test_the_queue_speaks_chinese(cases, compliance_officer):
    page = browser(compliance_officer, "zh-hans").get(url(QUEUE)).content.decode()
    assert "候选" in page  # the status, pgettext("reclaim status", "Candidate")
    assert "立即扫描" in page
    assert "批准所选回捞" in page


# --- scan now -------------------------------------------------------------------------------------
def test_scan_now_finds_a_new_candidate_and_reports_the_counts(
    world, compliance_officer, origination_api, text, partner, side
):
    fresh = lend(origination_api, text, partner, side)
    client = browser(compliance_officer)
    page = client.get(url(QUEUE)).content.decode()
    assert 'data-testid="scan"' in page

    response = client.post(url("referrals_reclaim_scan"))
    assert response.status_code == 302
    assert response["Location"] == url(QUEUE)
    assert messages_of(response) == [
        ("success", "Scan done: 1 new candidates, 2 near misses, 0 open cases blocked, 0 handed back.")
    ]
    assert Reclaim.objects.get(loan=fresh).status == Reclaim.Status.CANDIDATE
    assert client.get(url("referrals_reclaim_scan")).status_code == 405


@pytest.mark.parametrize("role", ["operations_user", "partnership_manager"])
def test_those_who_may_propose_may_scan(request, role, world):
    client = browser(request.getfixturevalue(role))
    assert 'data-testid="scan"' in client.get(url(QUEUE)).content.decode()
    response = client.post(url("referrals_reclaim_scan"))
    assert response.status_code == 302
    assert [level for level, _text in messages_of(response)] == ["success"]


def test_the_auditor_may_not_scan(world, auditor):
    client = browser(auditor)
    assert 'data-testid="scan"' not in client.get(url(QUEUE)).content.decode()
    assert client.post(url("referrals_reclaim_scan")).status_code == 403


# --- near misses ----------------------------------------------------------------------------------
def test_the_near_misses_show_the_failing_rule_and_why(world, compliance_officer):
    client = browser(compliance_officer)
    queue = client.get(url(QUEUE)).content.decode()
    assert f'href="{url(NEAR_MISSES)}"' in queue
    assert by_testid(queue, "near-miss-link").endswith("(2)")

    page = client.get(url(NEAR_MISSES)).content.decode()
    short, late = world["short"], world["late"]
    assert page.count('class="near-miss-rule"') == 2
    row = re.search(rf"<tr>.*?{short.loan_id}.*?</tr>", page, re.S).group(0)
    assert 'data-rule="ontime_installments"' in row
    assert "Enough instalments paid on time" in row
    assert "2 of 3 instalments paid on time" in row  # why, as the scan recorded it (stored in English)
    assert url("referrals_loan_change", short.pk) in row
    row = re.search(rf"<tr>.*?{late.loan_id}.*?</tr>", page, re.S).group(0)
    assert 'data-rule="no_overdue"' in row
    assert "an overdue was reported" in row

    overdue_only = client.get(url(NEAR_MISSES) + "?rule=no_overdue").content.decode()
    assert late.loan_id in overdue_only
    assert short.loan_id not in overdue_only
    by_partner = client.get(url(NEAR_MISSES) + f"?partner__id__exact={short.partner_id}").content.decode()
    assert by_partner.count('class="near-miss-rule"') == 2


def test_near_misses_are_read_only(world, compliance_officer):
    client = browser(compliance_officer)
    miss = ReclaimNearMiss.objects.first()
    assert client.post(url("referrals_reclaimnearmiss_change", miss.pk), {}).status_code == 403
    assert client.get(url("referrals_reclaimnearmiss_add")).status_code == 403
    assert client.post(url("referrals_reclaimnearmiss_delete", miss.pk), {"post": "yes"}).status_code == 403
    assert ReclaimNearMiss.objects.count() == 2


# --- a case's page --------------------------------------------------------------------------------
def test_the_case_page_shows_the_evidence_the_rules_now_and_the_borrower_masked(cases, compliance_officer):
    reclaim = cases[0]
    applicant = reclaim.referral.applicant
    page = browser(compliance_officer).get(case_url(reclaim)).content.decode()

    assert 'data-testid="reclaim-status" data-status="candidate"' in page
    assert rule_states(page) == dict.fromkeys(RULE_CODES, "true")
    assert by_testid(page, "evidence-ontime") == "3 / 3"
    assert by_testid(page, "evidence-contract") == f"PARTNER_A v{reclaim.contract.version}"
    assert by_testid(page, "evidence-allowed") == "yes"
    assert by_testid(page, "evidence-overdue") == "no"
    assert by_testid(page, "evidence-fee") == "200.00"
    assert by_testid(page, "evidence-non-solicit-days") == "0"
    assert by_testid(page, "evidence-non-solicit-until") == "2026-11-02 09:00:00"  # accepted, plus 0 days
    assert by_testid(page, "evidence-consent-status") == "Granted"
    assert "reclaim offer" in by_testid(page, "evidence-consent-purposes")
    repayments = re.findall(r'data-testid="repayment" data-on-time="(true|false)">(.*?)</tr>', page, re.S)
    assert [on_time for on_time, _row in repayments] == ["true"] * 3
    assert "2026-11-11" in repayments[0][1]
    assert "2026-11-10" in repayments[0][1]
    assert "90.00" in repayments[0][1]

    # Links to the referral, the loan, the partner, the contract and the consent.
    for name, pk in (
        ("referrals_referral_change", reclaim.referral_id),
        ("referrals_loan_change", reclaim.loan_id),
        ("partners_partner_change", reclaim.partner_id),
        ("partners_contract_change", reclaim.contract_id),
        ("referrals_consent_change", reclaim.consent_id),
    ):
        assert f'href="{url(name, pk)}"' in page, name

    # Masked: never the name, the phone or the ID number in clear.
    assert applicant.name_masked in page
    assert applicant.phone_masked in page
    for clear in (applicant.name, applicant.phone, applicant.national_id):
        assert clear not in page

    # The timeline: found by the scan (the system); no notice yet.
    assert re.findall(r'data-testid="transition" data-target="(\w+)"', page) == ["candidate"]
    assert "found by the scan" in page
    assert ">system<" in page
    assert "Nothing queued" in page


def test_a_rule_that_stopped_holding_shows_and_approving_blocks_the_case(cases, compliance_officer, side):
    reclaim = cases[0]
    side.overdue(reclaim.referral, at(26, 9), reclaim.loan.loan_id, 3, installment=4, due="2026-11-23")
    client = browser(compliance_officer)
    page = client.get(case_url(reclaim)).content.decode()
    assert rule_states(page) == {**dict.fromkeys(RULE_CODES, "true"), "no_overdue": "false"}
    assert "an overdue was reported" in page

    response = client.post(act_url(reclaim, "approve"), {"approve-reason": "三期按时还款，合同允许回捞"})
    assert response.status_code == 302
    assert messages_of(response) == [
        ("error", f"PARTNER_A {reclaim.loan.loan_id}: The reclaim was blocked: an overdue was reported")
    ]
    page = client.get(response["Location"]).content.decode()
    assert 'data-status="blocked"' in page
    assert not Dispatch.objects.filter(kind=Dispatch.Kind.RECLAIM_NOTICE).exists()
    assert 'data-testid="approve"' not in page
    assert 'data-testid="reject"' not in page


def test_compliance_approves_with_a_reason_and_the_partner_notice_is_queued(
    cases, compliance_officer, queued, django_capture_on_commit_callbacks
):
    reclaim = cases[0]
    client = browser(compliance_officer)
    page = client.get(case_url(reclaim)).content.decode()
    for name in ("approve", "reject", "propose"):
        assert f'data-testid="{name}"' in page
    assert 'data-testid="approve-reason"' in page

    # No reason: asked for, next to the field; nothing changes.
    response = client.post(act_url(reclaim, "approve"), {"approve-reason": "  "})
    assert response.status_code == 200
    assert re.search(r'id="action-approve".*?class="errorlist', response.content.decode(), re.S)
    # Too short for the service: its message, next to the field.
    response = client.post(act_url(reclaim, "approve"), {"approve-reason": "好"})
    assert response.status_code == 200
    assert "Give a reason (at least 4 characters)." in response.content.decode()
    assert Reclaim.objects.get(pk=reclaim.pk).status == Reclaim.Status.CANDIDATE

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(act_url(reclaim, "approve"), {"approve-reason": "三期按时还款，合同允许回捞"})
    assert response.status_code == 302
    assert messages_of(response) == [("success", f"PARTNER_A {reclaim.loan.loan_id} is now Approved.")]
    reclaim.refresh_from_db()
    assert (reclaim.status, reclaim.decided_by) == (Reclaim.Status.APPROVED, compliance_officer)
    notice = Dispatch.objects.get(kind=Dispatch.Kind.RECLAIM_NOTICE, idempotency_key=str(reclaim.pk))
    assert queued == [notice.pk]

    page = client.get(case_url(reclaim)).content.decode()
    assert 'data-testid="reclaim-status" data-status="approved"' in page
    assert 'data-testid="notice" data-status="pending"' in page
    assert f'href="{url("referrals_dispatch_change", notice.pk)}"' in page
    assert re.findall(r'data-testid="transition" data-target="(\w+)"', page) == ["candidate", "approved"]
    assert "三期按时还款，合同允许回捞" in page
    assert ">compliance<" in page
    assert 'data-testid="approve"' not in page
    assert 'data-testid="reject"' in page


def test_a_step_that_no_longer_applies_is_reported_not_failed(cases, compliance_officer):
    reclaim = cases[0]
    reclaim_reject(actor=compliance_officer, reclaim=reclaim, reason="借款人已投诉，暂不回捞")
    response = browser(compliance_officer).post(act_url(reclaim, "approve"), {"approve-reason": "理由充分足够"})
    assert response.status_code == 302
    assert messages_of(response) == [
        ("error", f"PARTNER_A {reclaim.loan.loan_id} is Rejected: “Approve” does not apply.")
    ]
    assert browser(compliance_officer).get(act_url(reclaim, "approve")).status_code == 405
    assert browser(compliance_officer).post(act_url(reclaim, "nonsense")).status_code == 404


def test_compliance_rejects_with_a_reason(cases, compliance_officer):
    reclaim = cases[0]
    client = browser(compliance_officer)
    assert client.post(act_url(reclaim, "reject"), {"reject-reason": ""}).status_code == 200
    response = client.post(act_url(reclaim, "reject"), {"reject-reason": "借款人已投诉，暂不回捞"})
    assert messages_of(response) == [("success", f"PARTNER_A {reclaim.loan.loan_id} is now Rejected.")]
    reclaim.refresh_from_db()
    assert (reclaim.status, reclaim.status_reason) == (Reclaim.Status.REJECTED, "借款人已投诉，暂不回捞")


def test_operations_may_propose_but_not_approve(cases, operations_user):
    reclaim = cases[0]
    client = browser(operations_user)
    page = client.get(case_url(reclaim)).content.decode()
    assert 'data-testid="propose"' in page
    assert 'data-testid="approve"' not in page
    assert 'data-testid="reject"' not in page

    response = client.post(act_url(reclaim, "propose"), {"propose-note": "还款记录良好，建议回捞"})
    assert messages_of(response) == [("success", f"PARTNER_A {reclaim.loan.loan_id} is now Under review.")]
    reclaim.refresh_from_db()
    assert (reclaim.status, reclaim.proposed_by) == (Reclaim.Status.UNDER_REVIEW, operations_user)

    assert client.post(act_url(reclaim, "approve"), {"approve-reason": "我自己批准一下"}).status_code == 403
    assert client.post(act_url(reclaim, "reject"), {"reject-reason": "我自己驳回一下"}).status_code == 403
    assert Reclaim.objects.get(pk=reclaim.pk).status == Reclaim.Status.UNDER_REVIEW
    # No bulk decisions offered either.
    queue = client.get(url(QUEUE)).content.decode()
    assert "approve_selected" not in queue
    assert 'name="_selected_action"' not in queue


def test_four_eyes_the_proposer_may_not_approve_and_a_second_officer_may(
    cases, compliance_officer, second_compliance_officer
):
    reclaim = cases[0]
    client = browser(compliance_officer)
    client.post(act_url(reclaim, "propose"), {"propose-note": ""})
    page = client.get(case_url(reclaim)).content.decode()
    assert 'data-testid="four-eyes-hint"' in page

    response = client.post(act_url(reclaim, "approve"), {"approve-reason": "三期按时还款，合同允许回捞"})
    assert messages_of(response) == [
        ("error", f"PARTNER_A {reclaim.loan.loan_id}: Four-eyes: whoever proposed a reclaim cannot approve it.")
    ]
    assert Reclaim.objects.get(pk=reclaim.pk).status == Reclaim.Status.UNDER_REVIEW

    second = browser(second_compliance_officer)
    assert 'data-testid="four-eyes-hint"' not in second.get(case_url(reclaim)).content.decode()
    second.post(act_url(reclaim, "approve"), {"approve-reason": "三期按时还款，合同允许回捞"})
    reclaim.refresh_from_db()
    assert (reclaim.status, reclaim.decided_by) == (Reclaim.Status.APPROVED, second_compliance_officer)


def test_the_auditor_reads_but_may_not_act(cases, auditor):
    reclaim = cases[0]
    client = browser(auditor)
    page = client.get(case_url(reclaim)).content.decode()
    assert 'data-testid="reclaim-rules"' in page
    assert 'data-testid="reclaim-timeline"' in page
    assert 'data-testid="reclaim-actions"' not in page
    for action, field in (("propose", "note"), ("approve", "reason"), ("reject", "reason")):
        assert client.post(act_url(reclaim, action), {f"{action}-{field}": "理由充分足够"}).status_code == 403
    queue = client.get(url(QUEUE)).content.decode()
    assert 'name="_selected_action"' not in queue
    response = bulk(client, [reclaim], "approve", "理由充分足够")  # no action offered: just the list again
    assert response.status_code == 200
    assert Reclaim.objects.get(pk=reclaim.pk).status == Reclaim.Status.CANDIDATE


# --- bulk decisions -------------------------------------------------------------------------------
def test_bulk_approve_asks_for_one_reason_then_decides_each_and_reports_every_refusal(
    cases, compliance_officer, operations_user, side, queued, django_capture_on_commit_callbacks
):
    fine, mine, stale = cases
    client = browser(compliance_officer)
    client.post(act_url(mine, "propose"), {"propose-note": ""})  # four-eyes: compliance may not approve it
    side.overdue(stale.referral, at(26, 9), stale.loan.loan_id, 3, installment=4, due="2026-11-23")  # blocks it
    queue = client.get(url(QUEUE)).content.decode()
    assert 'value="approve_selected"' in queue
    assert 'value="reject_selected"' in queue

    page = bulk(client, cases, "approve")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('data-testid="bulk-case"') == 3
    assert 'data-testid="bulk-reason"' in html
    assert 'name="apply"' in html

    assert bulk(client, cases, "approve", "").status_code == 200  # the reason is required
    refused = bulk(client, cases, "approve", "好")  # the service's rule: asked again, nothing decided
    assert refused.status_code == 200
    assert "Give a reason (at least 4 characters)." in refused.content.decode()
    assert set(Reclaim.objects.values_list("status", flat=True)) == {"candidate", "under_review"}

    with django_capture_on_commit_callbacks(execute=True):
        response = bulk(client, cases, "approve", "三期按时还款，合同允许回捞")
    assert response.status_code == 302
    assert response["Location"] == url(QUEUE)
    assert messages_of(response) == [
        ("success", f"1 reclaim approved (PARTNER_A {fine.loan.loan_id}); the partner will be notified."),
        (
            "error",
            f"PARTNER_A {mine.loan.loan_id} not approved: Four-eyes: whoever proposed a reclaim cannot approve it.",
        ),
        ("error", f"PARTNER_A {stale.loan.loan_id} not approved: The reclaim was blocked: an overdue was reported"),
    ]
    statuses = dict(Reclaim.objects.values_list("pk", "status"))
    assert [statuses[c.pk] for c in cases] == ["approved", "under_review", "blocked"]
    assert queued == [Dispatch.objects.get(kind=Dispatch.Kind.RECLAIM_NOTICE, idempotency_key=str(fine.pk)).pk]
    client.get(response["Location"])  # shows (and so consumes) the messages

    # A case already decided: refused for its status, from the list of every status.
    response = bulk(client, [fine], "approve", "再批一次试试", query="?status=all")
    assert response["Location"] == url(QUEUE) + "?status=all"
    [(level, text)] = messages_of(response)
    assert level == "error"
    assert text.startswith(f"PARTNER_A {fine.loan.loan_id} not approved: This reclaim is approved")


def test_bulk_reject_with_one_reason(cases, compliance_officer):
    client = browser(compliance_officer)
    response = bulk(client, cases[:2], "reject", "合作方不同意，暂停回捞")
    assert messages_of(response) == [
        (
            "success",
            f"2 reclaims rejected (PARTNER_A {cases[0].loan.loan_id}, PARTNER_A {cases[1].loan.loan_id}).",
        )
    ]
    rejected = Reclaim.objects.filter(status=Reclaim.Status.REJECTED)
    assert set(rejected.values_list("status_reason", flat=True)) == {"合作方不同意，暂停回捞"}
    assert rejected.count() == 2
    assert Reclaim.objects.get(pk=cases[2].pk).status == Reclaim.Status.CANDIDATE


def test_a_bulk_decision_is_bounded(cases, compliance_officer, monkeypatch):
    monkeypatch.setattr(reclaims_admin, "BULK_LIMIT", 2)
    response = bulk(browser(compliance_officer), cases, "approve")
    assert response.status_code == 302
    assert messages_of(response) == [("error", "Select at most 2 reclaims at a time.")]


def test_bulk_refusals_beyond_the_first_few_are_counted(cases, compliance_officer, monkeypatch):
    monkeypatch.setattr(reclaims_admin, "REFUSALS_LISTED", 1)
    for reclaim in cases:
        reclaim_reject(actor=compliance_officer, reclaim=reclaim, reason="借款人已投诉，暂不回捞")
    response = bulk(browser(compliance_officer), cases, "reject", "再驳回一次", query="?status=all")
    levels = [level for level, _text in messages_of(response)]
    assert levels == ["error", "error"]
    assert messages_of(response)[-1][1] == "… and 2 more."
