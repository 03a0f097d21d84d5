"""The operations screens: referral queues, dispatches, callbacks and loans, retry and cancel, and
pausing a partner or resetting its circuit — who may see and do what, that every action goes
through the services, that the pages stay cheap on big tables and never show personal data."""

from __future__ import annotations

import datetime
import re

import pytest
import responses
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from config import admin_tools
from partners import services as partner_services
from partners.circuit import circuit_failure
from partners.models import Partner, PartnerCircuit
from referrals.admin import operations
from referrals.models import Applicant, CallbackEvent, Dispatch, DispatchAttempt, Job, Loan, Referral
from referrals.services.callbacks import callback_apply, callback_receive
from referrals.services.dispatch import dispatch_send
from referrals.services.jobs import job_execute
from tests.factories import PartnerFactory, make_contract

URL = "/api/v1/applicants/"
ROLES = ["compliance_officer", "partnership_manager", "operations", "finance", "auditor", "origination", "outsider"]
STAFF = {"compliance_officer", "partnership_manager", "operations", "finance", "auditor"}
READ_ALL = {"compliance_officer", "operations", "auditor"}

# The applicant whose clear data must never appear on these pages.
NAME, PHONE = "欧阳娜娜", "13812345678"


# --- helpers --------------------------------------------------------------------------------------
def url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def operate_url(referral: Referral, name: str) -> str:
    return url("referrals_referral_operate", referral.pk, name)


def partner_operate_url(partner: Partner, name: str) -> str:
    return url("partners_partner_operate", partner.pk, name)


def messages_of(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def levels_after(client, target: str, data: dict | None = None) -> list[str]:
    """POST, then the message levels it left — shown (and so consumed) by following the redirect."""
    response = client.post(target, data or {})
    assert response.status_code == 302, response.status_code
    levels = [level for level, _text in messages_of(response)]
    client.get(response["Location"])
    return levels


def send(dispatch: Dispatch, *, status: int = 200, body: dict | None = None) -> str:
    """Call ``dispatch_send`` with the partner's answer stubbed at the HTTP boundary."""
    dispatch = Dispatch.objects.select_related("partner").get(pk=dispatch.pk)
    endpoint = "probe" if dispatch.kind == Dispatch.Kind.PROBE else "applications"
    with responses.RequestsMock() as stub:
        stub.add(responses.POST, f"{dispatch.partner.api_base_url}/{endpoint}", json=body or {}, status=status)
        return dispatch_send(dispatch.pk)


def probe_of(referral: Referral) -> Dispatch:
    return referral.dispatches.get(kind=Dispatch.Kind.PROBE)


def callback(partner: Partner, referral: Referral, event_id: str, type_: str, minutes_ago: int, **data) -> None:
    """A partner callback, stored and applied by the same services as the callback endpoint."""
    occurred = timezone.now() - datetime.timedelta(minutes=minutes_ago)
    body = {
        "event_id": event_id,
        "type": type_,
        "referral_id": str(referral.pk),
        "occurred_at": occurred.isoformat(),
        "data": data,
    }
    event, _created = callback_receive(partner=partner, body=body)
    callback_apply(event.pk)


def submit_and_lend(applicant: Applicant, partners: list[Partner], *, loan_id: str, repay: bool = False) -> Referral:
    """A accepts the probe, B declines, A accepts the application; then A approves and disburses a loan."""
    referral_a = applicant.referrals.get(partner=partners[0])
    assert send(probe_of(referral_a), body={"decision": "accept"}) == "succeeded"
    assert send(probe_of(applicant.referrals.get(partner=partners[1])), body={"decision": "decline"}) == "succeeded"
    application = referral_a.dispatches.get(kind=Dispatch.Kind.APPLICATION)
    assert send(application, body={"application_id": f"APP-{loan_id}", "decision": "accepted"}) == "succeeded"
    referral_a.refresh_from_db()
    assert referral_a.status == Referral.Status.SUBMITTED
    callback(partners[0], referral_a, f"{loan_id}-1", "loan.approved", 50, loan_id=loan_id, credit_limit="50000.00")
    callback(
        partners[0], referral_a, f"{loan_id}-2", "loan.disbursed", 40,
        loan_id=loan_id, principal="30000.00", apr="0.2400", term_months=12, first_due_date="2026-12-28",
    )  # fmt: skip
    if repay:
        callback(
            partners[0], referral_a, f"{loan_id}-3", "repayment.posted", 30,
            loan_id=loan_id, installment=1, due_date="2026-12-28", paid_date="2026-12-27",
            principal="2300.00", interest="600.00",
        )  # fmt: skip
        callback(
            partners[0], referral_a, f"{loan_id}-4", "loan.overdue", 20,
            loan_id=loan_id, installment=2, due_date="2027-01-28", days_past_due=5,
        )  # fmt: skip
    return referral_a


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def contracts(partners, partnership_manager, compliance_officer):
    return [
        make_contract(partners[0], drafter=partnership_manager, approver=compliance_officer, priority=20),
        make_contract(partners[1], drafter=partnership_manager, approver=compliance_officer, priority=10),
    ]


@pytest.fixture
def intake(origination_api, payload, contracts):
    """``intake(seq, **overrides)`` → the applicant, pushed through the intake API (two referrals)."""

    def make(seq: int = 1, **overrides) -> Applicant:
        response = origination_api.post(URL, payload(seq=seq, **overrides), format="json")
        assert response.status_code == 201, response.content
        return Applicant.objects.get(pk=response.json()["id"])

    return make


@pytest.fixture
def world(intake, partners, operations_user):
    """One applicant whose referral to A failed (HTTP 400) while B's is queued; one whose referral to
    A became a loan with a repayment and an overdue notice; B paused; A's circuit open."""
    failing = intake(1, name=NAME, phone=PHONE)
    failed = failing.referrals.get(partner=partners[0])
    assert send(probe_of(failed), status=400) == "failed"
    failed.refresh_from_db()
    queued = failing.referrals.get(partner=partners[1])
    lent = submit_and_lend(intake(2), partners, loan_id="L-1", repay=True)
    for _ in range(5):
        circuit_failure(partners[0].pk, "HTTP 503 from partner")
    partner_services.partner_pause(actor=operations_user, partner=partners[1], reason="partner maintenance window")
    return {
        "applicant": failing,
        "failed": failed,
        "queued": queued,
        "lent": lent,
        "loan": Loan.objects.get(loan_id="L-1"),
        "callback": CallbackEvent.objects.filter(type="loan.disbursed").get(),
        "dispatch": probe_of(failed),
        "partner_a": partners[0],
        "partner_b": Partner.objects.get(pk=partners[1].pk),
    }


# --- who may open which page ----------------------------------------------------------------------
PAGES = {
    "referral changelist": STAFF,
    "referral change": STAFF,
    "dispatch changelist": READ_ALL,
    "dispatch change": READ_ALL,
    "callback changelist": READ_ALL | {"finance"},
    "callback change": READ_ALL | {"finance"},
    "loan changelist": STAFF,
    "loan change": STAFF,
    "retry": {"operations"},
    "cancel": {"operations"},
    "pause": {"operations"},
    "resume": {"operations"},
    "reset circuit": {"operations"},
}


def page_url(page: str, world: dict) -> str:
    return {
        "referral changelist": url("referrals_referral_changelist"),
        "referral change": url("referrals_referral_change", world["failed"].pk),
        "dispatch changelist": url("referrals_dispatch_changelist"),
        "dispatch change": url("referrals_dispatch_change", world["dispatch"].pk),
        "callback changelist": url("referrals_callbackevent_changelist"),
        "callback change": url("referrals_callbackevent_change", world["callback"].pk),
        "loan changelist": url("referrals_loan_changelist"),
        "loan change": url("referrals_loan_change", world["loan"].pk),
        "retry": operate_url(world["failed"], "retry"),
        "cancel": operate_url(world["queued"], "cancel"),
        "pause": partner_operate_url(world["partner_a"], "pause"),
        "resume": partner_operate_url(world["partner_b"], "resume"),
        "reset circuit": partner_operate_url(world["partner_a"], "reset_circuit"),
    }[page]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_opens_only_the_operations_pages_its_permissions_allow(client, cast, world, role):
    client.force_login(cast[role])
    got, expected = {}, {}
    for page, allowed in PAGES.items():
        response = client.get(page_url(page, world))
        if role not in STAFF:
            got[page] = (response.status_code, response["Location"].split("?")[0])
            expected[page] = (302, reverse("admin:login"))
        else:
            got[page] = response.status_code
            expected[page] = 200 if role in allowed else 403
    assert got == expected


@pytest.mark.parametrize("role", sorted(STAFF - {"operations"}))
def test_only_operations_can_post_retry_cancel_pause_resume_or_reset(client, cast, world, role):
    client.force_login(cast[role])
    posts = [
        (operate_url(world["failed"], "retry"), {}),
        (operate_url(world["queued"], "cancel"), {"reason": "duplicate"}),
        (partner_operate_url(world["partner_a"], "pause"), {"reason": "failing"}),
        (partner_operate_url(world["partner_b"], "resume"), {}),
        (partner_operate_url(world["partner_a"], "reset_circuit"), {}),
    ]
    assert [client.post(target, data).status_code for target, data in posts] == [403] * 5
    response = client.post(
        url("referrals_referral_changelist"), {"action": "retry_selected", "_selected_action": [world["failed"].pk]}
    )
    assert response.status_code == 200  # the action is not offered: the changelist comes back with an error
    assert Referral.objects.get(pk=world["failed"].pk).status == "failed"
    assert Referral.objects.get(pk=world["queued"].pk).status == "queued"
    a, b = Partner.objects.get(pk=world["partner_a"].pk), Partner.objects.get(pk=world["partner_b"].pk)
    assert (a.paused, b.paused, a.circuit.state) == (False, True, "open")


@pytest.mark.parametrize(
    ("role", "buttons"),
    [
        ("operations", {"retry", "cancel"}),
        ("compliance_officer", set()),
        ("auditor", set()),
        ("finance", set()),
        ("partnership_manager", set()),
    ],
)
def test_retry_and_cancel_buttons_follow_permission(client, cast, world, role, buttons):
    client.force_login(cast[role])
    content = client.get(url("referrals_referral_change", world["failed"].pk)).content.decode()
    assert set(re.findall(r'class="operation-link operation-(\w+)"', content)) == buttons


def test_buttons_follow_the_referral_status(client, operations_user, world):
    client.force_login(operations_user)

    def buttons(referral):
        content = client.get(url("referrals_referral_change", referral.pk)).content.decode()
        return set(re.findall(r'class="operation-link operation-(\w+)"', content))

    assert buttons(world["failed"]) == {"retry", "cancel"}
    assert buttons(world["queued"]) == {"cancel"}
    assert buttons(world["lent"]) == set()  # submitted: final


@pytest.mark.parametrize(
    ("role", "actions"),
    [("operations", {"retry_selected"}), ("compliance_officer", set()), ("finance", set()), ("auditor", set())],
)
def test_bulk_retry_is_offered_by_permission_and_delete_never(client, cast, world, role, actions):
    client.force_login(cast[role])
    action_form = client.get(url("referrals_referral_changelist")).context["action_form"]
    offered = {name for name, _label in action_form.fields["action"].choices if name} if action_form else set()
    assert offered == actions


# --- the referral pages ---------------------------------------------------------------------------
def test_referral_changelist_is_newest_first_with_masked_applicant_status_reason_and_contract(
    client, operations_user, world
):
    client.force_login(operations_user)
    response = client.get(url("referrals_referral_changelist"))
    rows = list(response.context["cl"].result_list)
    assert [r.created_at for r in rows] == sorted((r.created_at for r in rows), reverse=True)
    assert len(rows) == 4
    content = response.content.decode()
    assert f"欧*** · {world['applicant'].external_id}" in content
    assert "HTTP 400" in content  # the failed one's reason, next to its status
    assert ">v1<" in content
    assert response.context["cl"].date_hierarchy is None


def test_referral_changelist_filters_by_status_and_partner_and_finds_by_phone_or_id(client, operations_user, world):
    client.force_login(operations_user)
    changelist = url("referrals_referral_changelist")
    failed = client.get(changelist, {"status__exact": "failed"}).context["cl"].result_list
    assert [r.pk for r in failed] == [world["failed"].pk]
    of_b = client.get(changelist, {"partner__id__exact": world["partner_b"].pk}).context["cl"].result_list
    assert {r.partner_id for r in of_b} == {world["partner_b"].pk}
    by_phone = client.get(changelist, {"q": PHONE}).context["cl"].result_list
    assert {r.pk for r in by_phone} == {world["failed"].pk, world["queued"].pk}
    by_id = client.get(changelist, {"q": str(world["lent"].pk)}).context["cl"].result_list
    assert [r.pk for r in by_id] == [world["lent"].pk]
    assert not client.get(changelist, {"q": PHONE[:7]}).context["cl"].result_list  # exact only


def test_referral_page_shows_routing_dispatches_with_attempts_callbacks_and_loans(client, operations_user, world):
    client.force_login(operations_user)
    content = client.get(url("referrals_referral_change", world["failed"].pk)).content.decode()
    routing = re.search(r'<table class="spillway-routing">.*?</table>', content, re.S).group(0)
    assert "PARTNER_A" in routing
    assert "PARTNER_B" in routing
    attempts = re.search(r'<table class="spillway-attempts">.*?</table>', content, re.S).group(0)
    assert "<td>400</td>" in attempts
    assert "Permanent error" in attempts or "永久" in attempts
    lent = client.get(url("referrals_referral_change", world["lent"].pk)).content.decode()
    loans = re.search(r'<table class="spillway-loans">.*?</table>', lent, re.S).group(0)
    assert "L-1" in loans
    assert "30000.00" in loans
    callbacks = re.search(r'<table class="spillway-callbacks">.*?</table>', lent, re.S).group(0)
    assert callbacks.count("<tr>") == 1 + 4  # header and the four events
    applications = re.findall(r'class="spillway-dispatch"', lent)
    assert len(applications) == 2  # the probe and the application


@pytest.mark.parametrize(
    ("role", "sections"),
    [
        ("operations", {"spillway-routing", "spillway-attempts", "spillway-callbacks", "spillway-loans"}),
        ("auditor", {"spillway-routing", "spillway-attempts", "spillway-callbacks", "spillway-loans"}),
        ("finance", {"spillway-callbacks", "spillway-loans"}),
        ("partnership_manager", {"spillway-loans"}),
    ],
)
def test_referral_page_sections_follow_what_the_role_may_read(client, cast, world, role, sections):
    client.force_login(cast[role])
    content = client.get(url("referrals_referral_change", world["lent"].pk)).content.decode()
    shown = set(re.findall(r'<table class="(spillway-[a-z]+)">', content))
    assert shown == sections


# --- the queue summary ----------------------------------------------------------------------------
def test_queue_summary_counts_open_and_failed_referrals_per_partner_with_the_oldest_age(
    client, operations_user, intake, partners, django_assert_num_queries
):
    applicants = [intake(seq) for seq in range(1, 5)]  # four applicants: four referrals to A, four to B
    first_a = applicants[0].referrals.get(partner=partners[0])
    assert send(probe_of(first_a), status=400) == "failed"
    declined = applicants[1].referrals.get(partner=partners[0])
    assert send(probe_of(declined), body={"decision": "decline"}) == "succeeded"  # final: not in the queue
    now = timezone.now()
    # Age the queue: B's oldest waits 3 hours, A's oldest queued one 90 minutes, the failed one 2 days.
    Referral.objects.filter(pk=applicants[2].referrals.get(partner=partners[1]).pk).update(
        created_at=now - datetime.timedelta(hours=3)
    )
    Referral.objects.filter(pk=applicants[3].referrals.get(partner=partners[0]).pk).update(
        created_at=now - datetime.timedelta(minutes=90)
    )
    Referral.objects.filter(pk=first_a.pk).update(created_at=now - datetime.timedelta(days=2))

    with django_assert_num_queries(1):
        summary = operations.queue_summary("/x/", now=now)
    cells = {(row.partner_code, cell.status): cell for row in summary["rows"] for cell in row.cells}
    assert {key: cell.count for key, cell in cells.items() if cell.count} == {
        ("PARTNER_A", "queued"): 2,
        ("PARTNER_A", "failed"): 1,
        ("PARTNER_B", "queued"): 4,
    }
    assert abs(cells["PARTNER_A", "queued"].age - datetime.timedelta(minutes=90)) < datetime.timedelta(seconds=5)
    assert abs(cells["PARTNER_B", "queued"].age - datetime.timedelta(hours=3)) < datetime.timedelta(seconds=5)
    assert abs(cells["PARTNER_A", "failed"].age - datetime.timedelta(days=2)) < datetime.timedelta(seconds=5)
    totals = {cell.status: cell.count for cell in summary["totals"]}
    assert totals == {"queued": 6, "probing": 0, "probe_accepted": 0, "submitting": 0, "failed": 1}

    client.force_login(operations_user)
    response = client.get(url("referrals_referral_changelist"))
    content = response.content.decode()
    row_a = re.search(r'<tr class="queue-row" data-partner="PARTNER_A">.*?</tr>', content, re.S).group(0)
    assert 'data-status="queued" data-count="2"' in row_a
    assert 'data-status="failed" data-count="1"' in row_a
    assert "queue-alert" in row_a  # failed referrals wait for a person
    # Each number opens the list filtered to it.
    link = re.search(r'<td class="queue-cell queue-failed queue-alert".*?href="([^"]+)"', row_a, re.S).group(1)
    filtered = client.get(link.replace("&amp;", "&")).context["cl"].result_list
    assert [r.pk for r in filtered] == [first_a.pk]


def test_an_empty_queue_says_so(client, operations_user, partners):
    client.force_login(operations_user)
    content = client.get(url("referrals_referral_changelist")).content.decode()
    assert 'class="queue-empty"' in content


# --- retry and cancel -----------------------------------------------------------------------------
def test_retry_puts_a_failed_referral_and_its_failed_call_back_in_the_queue(client, operations_user, world):
    failed, dispatch = world["failed"], world["dispatch"]
    assert (dispatch.status, dispatch.attempts) == ("failed", 1)
    client.force_login(operations_user)
    page = client.get(operate_url(failed, "retry"))
    assert page.status_code == 200
    assert 'name="reason"' not in page.content.decode()
    response = client.post(operate_url(failed, "retry"), {})
    assert response.status_code == 302
    assert response["Location"] == url("referrals_referral_change", failed.pk)
    assert [level for level, _text in messages_of(response)] == ["success"]
    failed.refresh_from_db()
    dispatch.refresh_from_db()
    assert failed.status == Referral.Status.QUEUED
    assert "retried by operations" in failed.status_reason
    assert (dispatch.status, dispatch.attempts, dispatch.last_error, dispatch.completed_at) == ("pending", 0, "", None)
    assert dispatch.next_attempt_at <= timezone.now()
    assert DispatchAttempt.objects.filter(dispatch=dispatch).count() == 1  # the history stays


def test_retry_of_a_referral_that_did_not_fail_is_refused_and_changes_nothing(client, operations_user, world):
    queued = world["queued"]
    dispatch = probe_of(queued)
    before = (queued.status, queued.status_reason, queued.updated_at, dispatch.status, dispatch.next_attempt_at)
    client.force_login(operations_user)
    for method in (client.get, client.post):
        response = method(operate_url(queued, "retry"))
        assert response.status_code == 302
        [(level, text)] = messages_of(response)
        assert level == "error"
        assert queued.partner.code in text
        client.get(response["Location"])  # shows (and so consumes) the message
    queued.refresh_from_db()
    dispatch.refresh_from_db()
    assert (queued.status, queued.status_reason, queued.updated_at, dispatch.status, dispatch.next_attempt_at) == before


def test_cancel_requires_a_reason_then_cancels_the_referral_and_its_pending_call(client, operations_user, world):
    queued = world["queued"]
    client.force_login(operations_user)
    response = client.post(operate_url(queued, "cancel"), {"reason": "   "})
    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    queued.refresh_from_db()
    assert queued.status == Referral.Status.QUEUED
    response = client.post(operate_url(queued, "cancel"), {"reason": "applicant called: duplicate application"})
    assert response.status_code == 302
    assert [level for level, _text in messages_of(response)] == ["success"]
    queued.refresh_from_db()
    assert queued.status == Referral.Status.CANCELLED
    assert queued.status_reason == "operations: applicant called: duplicate application"
    assert probe_of(queued).status == Dispatch.Status.CANCELLED


def test_a_failed_referral_can_be_cancelled_but_a_final_one_cannot(client, operations_user, world):
    client.force_login(operations_user)
    client.post(operate_url(world["failed"], "cancel"), {"reason": "partner asked us to stop"})
    assert Referral.objects.get(pk=world["failed"].pk).status == Referral.Status.CANCELLED
    client.get(url("referrals_referral_changelist"))  # shows the success message
    assert levels_after(client, operate_url(world["lent"], "cancel"), {"reason": "too late"}) == ["error"]
    assert Referral.objects.get(pk=world["lent"].pk).status == Referral.Status.SUBMITTED


def test_bulk_retry_reports_what_was_retried_and_what_was_refused(client, operations_user, intake, partners):
    applicants = [intake(seq) for seq in range(1, 4)]
    failed = [a.referrals.get(partner=partners[0]) for a in applicants[:2]]
    for referral in failed:
        assert send(probe_of(referral), status=422) == "failed"
    queued = applicants[2].referrals.get(partner=partners[0])
    client.force_login(operations_user)
    response = client.post(
        url("referrals_referral_changelist"),
        {"action": "retry_selected", "_selected_action": [str(r.pk) for r in (*failed, queued)]},
    )
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == url("referrals_job_change", job.pk)  # a background job (test_jobs.py)
    job_execute(job.pk)
    job.refresh_from_db()
    assert job.result["requeued"] == 2
    [refused] = job.result["refused"]
    assert refused["count"] == 1
    assert str(queued.pk) in refused["items"][0]
    assert set(Referral.objects.filter(pk__in=[r.pk for r in failed]).values_list("status", flat=True)) == {"queued"}
    assert set(Dispatch.objects.filter(referral__in=failed).values_list("status", flat=True)) == {"pending"}
    assert Referral.objects.get(pk=queued.pk).status == "queued"


# --- dispatches, callbacks, loans -----------------------------------------------------------------
def test_dispatch_changelist_and_page_show_the_outbox_with_the_newest_attempts(
    client, operations_user, world, monkeypatch
):
    client.force_login(operations_user)
    response = client.get(url("referrals_dispatch_changelist"), {"status__exact": "failed"})
    assert [d.pk for d in response.context["cl"].result_list] == [world["dispatch"].pk]
    content = response.content.decode()
    assert "HTTP 400" in content
    # Many attempts: the page lists the newest ATTEMPTS_SHOWN, newest first.
    dispatch = world["dispatch"]
    start = DispatchAttempt.objects.get(dispatch=dispatch).started_at  # attempt 1
    DispatchAttempt.objects.bulk_create(
        DispatchAttempt(dispatch=dispatch, number=n, started_at=start + datetime.timedelta(seconds=n),
                        outcome="transient", http_status=503, error=f"HTTP 503 #{n}")
        for n in range(2, 32)
    )  # fmt: skip
    page = client.get(url("referrals_dispatch_change", dispatch.pk))
    [inline] = page.context["inline_admin_formsets"]
    shown = [form.original.number for form in inline]
    assert shown == list(range(31, 11, -1))  # 31 attempts on record, the newest 20 shown


def test_callback_changelist_filters_by_type_and_links_the_referral(client, finance_user, world):
    client.force_login(finance_user)
    response = client.get(url("referrals_callbackevent_changelist"), {"type": "repayment.posted"})
    [event] = response.context["cl"].result_list
    assert event.type == "repayment.posted"
    assert url("referrals_referral_change", world["lent"].pk) in response.content.decode()


def test_loan_page_shows_repayments_and_overdues_to_those_who_may_read_them(
    client, finance_user, partnership_manager, world
):
    loan = world["loan"]
    client.force_login(finance_user)
    response = client.get(url("referrals_loan_change", loan.pk))
    assert [type(f.opts).__name__ for f in response.context["inline_admin_formsets"]] == [
        "RepaymentInline",
        "LoanOverdueInline",
    ]
    content = response.content.decode()
    assert "600.00" in content  # the interest of the first instalment
    assert 'name="_save"' not in content
    client.force_login(partnership_manager)  # may read repayments, not overdue notices
    response = client.get(url("referrals_loan_change", loan.pk))
    assert [type(f.opts).__name__ for f in response.context["inline_admin_formsets"]] == ["RepaymentInline"]
    changelist = client.get(url("referrals_loan_changelist")).context["cl"].result_list
    assert [(loan.loan_id, loan.status, str(loan.principal)) for loan in changelist] == [
        ("L-1", "disbursed", "30000.00")
    ]


@pytest.mark.parametrize(
    "changelist",
    ["referrals_referral_changelist", "referrals_dispatch_changelist", "referrals_callbackevent_changelist"],
)
def test_changelists_count_at_most_the_cap(client, operations_user, world, monkeypatch, changelist):
    monkeypatch.setattr(admin_tools.BoundedCountPaginator, "cap", 2)
    client.force_login(operations_user)
    response = client.get(url(changelist))
    paginator = response.context["cl"].paginator
    assert paginator.capped or paginator.estimated  # never a full count
    if paginator.capped:  # SQLite, or PostgreSQL when the planner's estimate is not larger
        assert response.context["cl"].result_count == 2
        assert 'class="help count-capped"' in response.content.decode()
    else:  # PostgreSQL past the cap: the planner's estimate for the filter, shown as "about N"
        assert response.context["cl"].result_count >= 2


def test_every_operations_page_is_read_only(client, operations_user, world):
    client.force_login(operations_user)
    for name in ("referral", "dispatch", "callbackevent", "loan"):
        assert client.get(url(f"referrals_{name}_add")).status_code == 403
    before = Referral.objects.get(pk=world["queued"].pk).status
    response = client.post(url("referrals_referral_change", world["queued"].pk), {"status": "submitted"})
    assert response.status_code == 403
    assert Referral.objects.get(pk=world["queued"].pk).status == before


# --- partners: pause, resume, reset circuit -------------------------------------------------------
def test_pause_needs_a_reason_and_goes_through_the_service(client, operations_user, world):
    partner = world["partner_a"]
    client.force_login(operations_user)
    response = client.post(partner_operate_url(partner, "pause"), {"reason": ""})
    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    assert not Partner.objects.get(pk=partner.pk).paused
    response = client.post(partner_operate_url(partner, "pause"), {"reason": "503s since 09:00, ticket OPS-12"})
    assert response.status_code == 302
    assert [level for level, _text in messages_of(response)] == ["success"]
    partner.refresh_from_db()
    assert (partner.paused, partner.pause_reason) == (True, "503s since 09:00, ticket OPS-12")
    assert partner.history.first().history_user == operations_user  # the service's audit trail


def test_resume_and_reset_circuit_go_through_the_services(client, operations_user, world):
    client.force_login(operations_user)
    assert levels_after(client, partner_operate_url(world["partner_b"], "resume")) == ["success"]
    b = Partner.objects.get(pk=world["partner_b"].pk)
    assert (b.paused, b.pause_reason) == (False, "")
    circuit = PartnerCircuit.objects.get(partner=world["partner_a"])
    assert (circuit.state, circuit.consecutive_failures) == ("open", 5)
    assert levels_after(client, partner_operate_url(world["partner_a"], "reset_circuit")) == ["success"]
    circuit.refresh_from_db()
    assert (circuit.state, circuit.consecutive_failures, circuit.open_until) == ("closed", 0, None)


def test_operations_that_do_not_apply_are_refused_with_a_message(client, operations_user, world):
    client.force_login(operations_user)
    for target in (
        partner_operate_url(world["partner_b"], "pause"),  # already paused
        partner_operate_url(world["partner_a"], "resume"),  # not paused
    ):
        assert levels_after(client, target, {"reason": "x"}) == ["error"]
    assert Partner.objects.get(pk=world["partner_b"].pk).pause_reason == "partner maintenance window"


def test_partner_changelist_shows_paused_and_circuit_state_to_those_who_may_see_circuits(
    client, operations_user, partnership_manager, world
):
    client.force_login(operations_user)
    content = client.get(url("partners_partner_changelist")).content.decode()
    assert 'class="circuit circuit-open"' in content
    assert "5" in re.search(r'class="circuit circuit-open">.*?</td>', content, re.S).group(0)
    assert 'class="circuit circuit-closed"' in content  # B has no circuit row: closed
    assert 'class="partner-paused"' in content
    assert "partner maintenance window" in content
    client.force_login(partnership_manager)
    content = client.get(url("partners_partner_changelist")).content.decode()
    assert "circuit-" not in content
    assert 'class="partner-paused"' in content


@pytest.mark.parametrize(
    ("role", "partner", "buttons"),
    [
        ("operations", "partner_a", {"pause", "reset_circuit"}),
        ("operations", "partner_b", {"resume"}),
        ("compliance_officer", "partner_a", set()),
        ("partnership_manager", "partner_b", set()),
    ],
)
def test_partner_page_shows_the_circuit_and_the_operations_buttons(client, cast, world, role, partner, buttons):
    client.force_login(cast[role])
    content = client.get(url("partners_partner_change", world[partner].pk)).content.decode()
    assert set(re.findall(r'class="operation-link operation-(\w+)"', content)) == buttons
    circuit_shown = "circuit circuit-" in content
    assert circuit_shown is (role != "partnership_manager")  # partnership managers may not see circuits
    if partner == "partner_a" and circuit_shown:
        assert "HTTP 503 from partner" in content  # the circuit's last error
        assert 'class="circuit circuit-open"' in content


# --- masking --------------------------------------------------------------------------------------
def test_no_operations_page_shows_the_applicants_clear_personal_data(client, operations_user, world):
    applicant = world["applicant"]
    clear = [applicant.name, applicant.phone, applicant.national_id]
    assert clear[:2] == [NAME, PHONE]
    client.force_login(operations_user)
    pages = [page_url(page, world) for page in PAGES] + [
        url("referrals_referral_change", world["queued"].pk),
        url("referrals_referral_changelist") + f"?q={world['applicant'].external_id}",
    ]
    for target in pages:
        content = client.get(target).content.decode()
        leaked = [value for value in clear if value in content]
        assert not leaked, f"{target} shows {leaked}"
    content = client.get(url("referrals_referral_change", world["failed"].pk)).content.decode()
    assert applicant.name_masked in content


# --- bounded query counts -------------------------------------------------------------------------
@pytest.fixture
def busy(intake, partners):
    """20 applicants → 40 referrals: 20 submitted with loans (some repaid), some failed calls."""
    for seq in range(10, 30):
        applicant = intake(seq)
        submit_and_lend(applicant, partners, loan_id=f"L-{seq}", repay=seq % 3 == 0)
    for referral in Referral.objects.filter(partner=partners[1])[:3]:
        DispatchAttempt.objects.filter(dispatch__referral=referral).update(http_status=500)
    for n in range(3):
        PartnerFactory(code=f"EXTRA_{n}")
    for _ in range(5):
        circuit_failure(partners[0].pk, "HTTP 503")
    return Referral.objects.count()


def test_every_operations_changelist_and_the_referral_page_run_a_bounded_number_of_queries(
    client, operations_user, busy, django_assert_max_num_queries
):
    assert busy == 40
    client.force_login(operations_user)
    referral = Referral.objects.filter(status="submitted").first()
    loan = Loan.objects.first()
    dispatch = Dispatch.objects.filter(kind="application").first()
    # page → most queries (session, user, permissions, the page's own reads; none per row)
    pages = {
        url("referrals_referral_changelist"): 10,  # + the queue summary's one aggregate
        url("referrals_dispatch_changelist"): 9,
        url("referrals_callbackevent_changelist"): 9,
        url("referrals_loan_changelist"): 9,
        url("partners_partner_changelist"): 9,  # circuits joined, not one query per partner
        url("referrals_referral_change", referral.pk): 12,  # + routing, dispatches, attempts, callbacks, loans
        url("referrals_dispatch_change", dispatch.pk): 8,
        url("referrals_loan_change", loan.pk): 9,
        url("referrals_callbackevent_change", CallbackEvent.objects.first().pk): 7,
    }
    for target, limit in pages.items():
        client.get(target)  # warm the session and permission caches like a real visit
        with django_assert_max_num_queries(limit):
            response = client.get(target)
        assert response.status_code == 200
    for name in ("referral", "dispatch", "callbackevent", "loan"):
        result = client.get(url(f"referrals_{name}_changelist")).context["cl"].result_list
        assert len(result) >= 20


def test_the_referral_changelist_query_count_does_not_grow_with_rows(client, operations_user, intake, partners):
    client.force_login(operations_user)
    intake(1)
    client.get(url("referrals_referral_changelist"))
    with CaptureQueriesContext(connection) as few:
        client.get(url("referrals_referral_changelist"))
    for seq in range(2, 12):
        intake(seq)
    with CaptureQueriesContext(connection) as many:
        response = client.get(url("referrals_referral_changelist"))
    assert len(response.context["cl"].result_list) == 22
    assert len(many) <= len(few)
    summary = [q["sql"] for q in many.captured_queries if "GROUP BY" in q["sql"]]
    assert len(summary) == 1
