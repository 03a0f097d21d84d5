"""The compliance screens: who may open what, personal data masked everywhere, exact search through
the blind indexes, reveal and export recorded in the ledger, the timeline and its verified badge."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zoneinfo

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from referrals import triggers
from referrals.models import Applicant, Consent, ConsentEvent, ConsentText, Job
from referrals.services.consents import applicant_reveal
from referrals.services.jobs import job_execute
from referrals.services.ledger import ledger_checkpoint
from tests.referrals import builders

ROLES = ["compliance_officer", "partnership_manager", "operations", "finance", "auditor", "origination", "outsider"]
STAFF = {"compliance_officer", "partnership_manager", "operations", "finance", "auditor"}
READERS = {"compliance_officer", "auditor"}  # not operations: referrals 0010 (least privilege)
LEDGER_READERS = {"compliance_officer", "auditor"}
COMPLIANCE = {"compliance_officer"}


def url(name: str, *args) -> str:
    return reverse(f"admin:referrals_{name}", args=args)


def clear_values(seq: int) -> dict[str, str]:
    body = builders.intake_body(text=ConsentText(code="x", sha256="0" * 64), seq=seq, partner_codes=[])
    return {"name": body["name"], "national_id": body["national_id"], "phone": body["phone"]}


def events_of(consent: Consent) -> list[ConsentEvent]:
    return list(consent.events.order_by("seq"))


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture
def named_partners(db):
    return builders.partners()


@pytest.fixture
def admin_text(compliance_officer):
    return builders.consent_text(actor=compliance_officer)


@pytest.fixture
def applicant(origination, admin_text, named_partners) -> Applicant:
    return builders.applicant_with_consent(origination=origination, text=admin_text, seq=1)


@pytest.fixture
def other_applicant(origination, admin_text, named_partners) -> Applicant:
    return builders.applicant_with_consent(origination=origination, text=admin_text, seq=2)


@pytest.fixture
def consent(applicant) -> Consent:
    return applicant.consents.get()


@pytest.fixture
def officer_client(client, compliance_officer):
    client.force_login(compliance_officer)
    return client


# --- who may open which page ----------------------------------------------------------------------
PAGES = {
    "applicant changelist": READERS,
    "applicant detail": READERS,
    "reveal": COMPLIANCE,
    "export evidence": COMPLIANCE,
    "consent changelist": READERS,
    "consent detail": READERS,
    "withdraw": COMPLIANCE,
    "consent text changelist": LEDGER_READERS,
    "consent text detail": LEDGER_READERS,
    "consent text add": COMPLIANCE,
    "ledger event changelist": LEDGER_READERS,
    "ledger event detail": LEDGER_READERS,
    "checkpoint changelist": LEDGER_READERS,
}


def page_url(page: str, applicant: Applicant, consent: Consent) -> str:
    event = consent.events.first()
    return {
        "applicant changelist": url("applicant_changelist"),
        "applicant detail": url("applicant_change", applicant.pk),
        "reveal": url("applicant_reveal", applicant.pk),
        "export evidence": url("applicant_export", applicant.pk),
        "consent changelist": url("consent_changelist"),
        "consent detail": url("consent_change", consent.pk),
        "withdraw": url("consent_withdraw", consent.pk),
        "consent text changelist": url("consenttext_changelist"),
        "consent text detail": url("consenttext_change", consent.text_id),
        "consent text add": url("consenttext_add"),
        "ledger event changelist": url("consentevent_changelist"),
        "ledger event detail": url("consentevent_change", event.pk),
        "checkpoint changelist": url("ledgercheckpoint_changelist"),
    }[page]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("admin_page", list(PAGES))
def test_each_role_opens_only_the_compliance_pages_its_permissions_allow(
    client, cast, applicant, consent, role, admin_page
):
    client.force_login(cast[role])
    response = client.get(page_url(admin_page, applicant, consent))
    if role not in STAFF:
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    elif role in PAGES[admin_page]:
        assert response.status_code == 200
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("page", ["applicant detail", "consent detail", "ledger event detail", "consent text detail"])
def test_nothing_can_be_added_changed_or_deleted_from_the_record_pages(officer_client, applicant, consent, page):
    response = officer_client.get(page_url(page, applicant, consent))
    content = response.content.decode()
    assert 'name="_save"' not in content
    assert "deletelink" not in content
    assert officer_client.post(page_url(page, applicant, consent), {}).status_code == 403


def test_the_admin_offers_no_way_to_add_applicants_consents_or_ledger_rows(officer_client):
    for name in ("applicant_add", "consent_add", "consentevent_add", "ledgercheckpoint_add"):
        assert officer_client.get(url(name)).status_code == 403


# --- masking ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", sorted(READERS))
def test_clear_personal_data_never_appears_on_any_page(client, cast, applicant, consent, role):
    clear = clear_values(1)
    client.force_login(cast[role])
    pages = [
        url("applicant_changelist"),
        url("applicant_change", applicant.pk),
        url("consent_changelist"),
        url("consent_change", consent.pk),
    ]
    if role in LEDGER_READERS:
        pages += [url("consentevent_changelist"), url("consentevent_change", consent.events.first().pk)]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        content = response.content.decode()
        for value in clear.values():
            assert value not in content, f"{value} in clear on {page}"
    detail = client.get(url("applicant_change", applicant.pk)).content.decode()
    assert applicant.phone_masked in detail  # 139****xxxx
    assert applicant.national_id_masked in detail  # 110105********xxxx
    assert applicant.name_masked in detail  # 李*
    assert applicant.phone_masked == clear["phone"][:3] + "****" + clear["phone"][-4:]


def test_changelist_shows_masked_columns_with_the_province_name(officer_client, applicant):
    content = officer_client.get(url("applicant_changelist")).content.decode()
    assert applicant.external_id in content
    assert applicant.name_masked in content
    assert applicant.phone_masked in content
    assert applicant.national_id_masked in content
    assert "310000 上海市" in content
    assert "50,000.00" in content or "50000.00" in content


# --- search -------------------------------------------------------------------------------------------
def found(client, term: str, changelist: str = "applicant_changelist") -> list:
    response = client.get(url(changelist), {"q": term})
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_search_finds_the_applicant_by_clear_phone_id_number_or_external_id(officer_client, applicant, other_applicant):
    clear = clear_values(1)
    for term in (clear["phone"], clear["national_id"], clear["national_id"].lower(), applicant.external_id):
        assert [a.pk for a in found(officer_client, term)] == [applicant.pk], term
    # The consent list searches the same way.
    assert [c.applicant_id for c in found(officer_client, clear["phone"], "consent_changelist")] == [applicant.pk]


def test_search_is_exact_so_partial_numbers_find_nothing(officer_client, applicant):
    clear = clear_values(1)
    for term in (clear["phone"][:7], clear["phone"][-4:], clear["national_id"][:10], applicant.external_id[:-1]):
        assert found(officer_client, term) == [], term


def test_search_never_runs_a_pattern_match_on_encrypted_columns(officer_client, applicant):
    with CaptureQueriesContext(connection) as queries:
        found(officer_client, clear_values(1)["phone"])
    statements = " ".join(q["sql"] for q in queries.captured_queries).upper()
    assert "LIKE" not in statements
    assert "phone_index" in " ".join(q["sql"] for q in queries.captured_queries)


def test_the_search_box_says_what_it_searches(officer_client, applicant):
    content = officer_client.get(url("applicant_changelist"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert 'id="searchbar"' in content
    assert "phone, ID number or external id" in content


def test_a_phone_typed_in_the_search_box_reaches_the_access_log_masked(officer_client, applicant):
    """The search is a GET, so the clear phone is in the request line that the server logs; the
    project's console handler masks it."""
    clear = clear_values(1)["phone"]
    response = officer_client.get(url("applicant_changelist"), {"q": clear})
    request_line = f'"GET {response.wsgi_request.get_full_path()} HTTP/1.1" 200'
    assert clear in request_line
    [handler] = [h for h in logging.getLogger("django").handlers if h.filters]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        logging.getLogger("django.server").warning(request_line)
    finally:
        handler.setStream(previous)
    assert clear not in stream.getvalue()
    assert f"?q={clear[:3]}****{clear[-4:]}" in stream.getvalue()


# --- reveal -------------------------------------------------------------------------------------------
def test_reveal_is_refused_without_the_permission_and_nothing_is_recorded(client, auditor, applicant, consent):
    client.force_login(auditor)
    before = consent.events.count()
    response = client.post(url("applicant_reveal", applicant.pk), {"show": ["phone"], "reason": "complaint 42"})
    assert response.status_code == 403
    assert consent.events.count() == before
    assert clear_values(1)["phone"] not in response.content.decode()
    # …and the button is not offered.
    assert "action-reveal" not in client.get(url("applicant_change", applicant.pk)).content.decode()


@pytest.mark.parametrize("reason", ["", "   ", "ab"])
def test_reveal_needs_a_reason(officer_client, applicant, consent, reason):
    before = consent.events.count()
    response = officer_client.post(url("applicant_reveal", applicant.pk), {"show": ["phone"], "reason": reason})
    assert response.status_code == 200
    assert response.context["form"].errors.get("reason")
    assert response.context["revealed"] is None
    assert clear_values(1)["phone"] not in response.content.decode()
    assert consent.events.count() == before


def test_reveal_needs_at_least_one_field(officer_client, applicant, consent):
    response = officer_client.post(url("applicant_reveal", applicant.pk), {"reason": "complaint 42"})
    assert response.context["form"].errors.get("show")
    assert consent.events.filter(type="pii_revealed").count() == 0


def test_reveal_with_the_permission_shows_the_clear_values_once_and_records_it(
    officer_client, compliance_officer, applicant, consent, caplog
):
    clear = clear_values(1)
    detail = officer_client.get(url("applicant_change", applicant.pk)).content.decode()
    assert "action-reveal" in detail
    assert officer_client.get(url("applicant_reveal", applicant.pk)).status_code == 200  # the form

    with caplog.at_level(logging.DEBUG):
        response = officer_client.post(
            url("applicant_reveal", applicant.pk),
            {"show": ["name", "phone"], "reason": "投诉 #2026-118：核对来电人身份"},
        )
    content = response.content.decode()
    assert response.status_code == 200
    assert clear["name"] in content
    assert clear["phone"] in content
    assert clear["national_id"] not in content  # not asked for
    assert "no-store" in response["Cache-Control"]
    assert list(get_messages(response.wsgi_request)) == []
    for value in clear.values():
        assert value not in caplog.text

    event = consent.events.order_by("-seq").first()
    assert event.type == ConsentEvent.Type.PII_REVEALED
    assert event.payload == {
        "by": compliance_officer.username,
        "fields": ["name", "phone"],
        "reason": "投诉 #2026-118：核对来电人身份",
    }
    assert event.prev_hash == events_of(consent)[-2].hash
    # Shown once: the next visit to the applicant is masked again.
    assert clear["phone"] not in officer_client.get(url("applicant_change", applicant.pk)).content.decode()


# --- evidence export ------------------------------------------------------------------------------------
def test_export_is_refused_without_the_permission(client, auditor, applicant, consent):
    client.force_login(auditor)
    before = consent.events.count()
    assert client.post(url("applicant_export", applicant.pk)).status_code == 403
    assert consent.events.count() == before
    assert "action-export" not in client.get(url("applicant_change", applicant.pk)).content.decode()


def test_export_downloads_the_evidence_bundle_and_records_it(
    officer_client, compliance_officer, applicant, consent, admin_text
):
    ledger_checkpoint()
    officer_client.post(
        url("applicant_reveal", applicant.pk), {"show": ["phone"], "reason": "regulator request 7"}
    )  # a second event, not yet sealed by a checkpoint
    stored = events_of(consent)

    started = officer_client.post(url("applicant_export", applicant.pk))
    job = Job.objects.get()
    assert started.status_code == 302
    assert started["Location"] == url("job_change", job.pk)
    job_execute(job.pk)  # the worker (tests/referrals/test_jobs.py runs the whole way with Celery)
    response = officer_client.get(url("job_download", job.pk))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert response["Content-Disposition"] == f'attachment; filename="evidence-{applicant.external_id}.json"'
    assert "no-store" in response["Cache-Control"]
    raw = b"".join(response.streaming_content).decode()  # read to the end: the file is closed
    bundle = json.loads(raw)

    assert bundle["format"] == "spillway-evidence-v1"
    assert bundle["applicant"]["external_id"] == applicant.external_id
    assert bundle["applicant"]["phone"] == applicant.phone_masked
    for value in clear_values(1).values():
        assert value not in raw
    [text] = bundle["consent_texts"]
    assert (text["code"], text["sha256"], text["body"]) == (admin_text.code, admin_text.sha256, admin_text.body)
    [exported] = bundle["consents"]
    assert exported["id"] == str(consent.pk)
    assert [r["partner"] for r in exported["recipients"]] == ["PARTNER_A", "PARTNER_B"]
    assert [(e["document"]["seq"], e["document"]["type"], e["hash"]) for e in exported["events"]] == [
        (e.seq, e.type, e.hash) for e in stored
    ]
    assert exported["events"][0]["checkpoint"] == bundle["checkpoints"][0]["checkpoint"]
    assert "inclusion_proof" in exported["events"][0]
    assert exported["events"][1]["checkpoint"] is None

    last = consent.events.order_by("-seq").first()
    assert last.type == ConsentEvent.Type.EVIDENCE_EXPORTED
    assert last.payload["by"] == compliance_officer.username
    assert len(last.payload["bundle_sha256"]) == 64


def test_the_export_page_explains_before_downloading(officer_client, applicant, consent):
    response = officer_client.get(url("applicant_export", applicant.pk))
    assert response.status_code == 200
    assert 'id="export_form"' in response.content.decode()
    assert not consent.events.filter(type="evidence_exported").exists()  # a GET records nothing


# --- consent page and timeline ----------------------------------------------------------------------------
def test_consent_page_shows_the_text_as_shown_the_partners_and_the_scope(officer_client, consent, admin_text):
    content = officer_client.get(url("consent_change", consent.pk), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert 'class="consent-text-body"' in content
    assert admin_text.body.splitlines()[2] in content  # leading spaces kept (shown pre-wrap)
    assert admin_text.sha256 in content
    assert 'class="text-hash-ok"' in content
    for disclosed in ("甲消费金融有限公司", "dpo@a.example", "乙银行股份有限公司", "021-12345678"):
        assert disclosed in content
    assert "loan referral" in content
    assert "identity (name, ID number)" in content
    assert reverse("admin:referrals_applicant_change", args=[consent.applicant_id]) in content


def test_timeline_shows_every_event_with_its_hashes_and_the_verified_badge(officer_client, applicant, consent):
    officer_client.post(url("applicant_reveal", applicant.pk), {"show": ["name"], "reason": "complaint 42"})
    response = officer_client.get(url("consent_change", consent.pk))
    content = response.content.decode()
    for event in events_of(consent):
        assert f'title="{event.hash}"' in content
        assert f'title="{event.prev_hash}"' in content
        assert f'data-seq="{event.seq}"' in content
    assert "ledger-event-granted" in content
    assert "ledger-event-pii_revealed" in content
    assert 'data-ledger="verified"' in content
    assert 'data-ledger="broken"' not in content


def test_timeline_shows_the_time_in_shanghai(officer_client, consent):
    event = consent.events.get(seq=1)
    content = officer_client.get(url("consent_change", consent.pk)).content.decode()
    shanghai = event.occurred_at.astimezone(zoneinfo.ZoneInfo("Asia/Shanghai"))
    assert shanghai.strftime("%Y-%m-%d %H:%M:%S") in content


def test_a_tampered_event_turns_the_badge_red_with_the_first_problem(officer_client, applicant, consent):
    officer_client.post(url("applicant_reveal", applicant.pk), {"show": ["name"], "reason": "complaint 42"})
    target = consent.events.get(seq=1)
    forged = {**target.payload, "partners_note": "PARTNER_C added later"}
    cast = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    triggers.drop(connection)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE referrals_consentevent SET payload = {cast} WHERE id = %s",  # noqa: S608 — fixed SQL
                [json.dumps(forged), target.pk],
            )
    finally:
        triggers.install(connection)

    content = officer_client.get(url("consent_change", consent.pk)).content.decode()
    assert 'data-ledger="broken"' in content
    assert 'data-ledger="verified"' not in content
    assert f"event #1 (id {target.pk}): hash does not match its content" in content


def test_operations_see_neither_the_consent_nor_the_ledger(client, operations_user, consent):
    client.force_login(operations_user)  # least privilege (referrals 0010): queues and retries need neither
    assert client.get(url("consent_change", consent.pk)).status_code == 403
    assert client.get(url("applicant_change", consent.applicant_id)).status_code == 403


# --- withdrawal on the applicant's behalf ------------------------------------------------------------------
def test_compliance_withdraws_a_consent_with_channel_and_reason(officer_client, compliance_officer, consent):
    assert "action-withdraw" in officer_client.get(url("consent_change", consent.pk)).content.decode()
    refused = officer_client.post(url("consent_withdraw", consent.pk), {"channel": "call_center", "reason": ""})
    assert refused.status_code == 200
    assert refused.context["form"].errors.get("reason")
    consent.refresh_from_db()
    assert consent.status == Consent.Status.GRANTED

    response = officer_client.post(
        url("consent_withdraw", consent.pk), {"channel": "call_center", "reason": "客服来电 #7781"}
    )
    assert response.status_code == 302
    consent.refresh_from_db()
    assert consent.status == Consent.Status.WITHDRAWN
    assert consent.withdrawal_channel == "call_center"
    last = consent.events.order_by("-seq").first()
    assert last.type == ConsentEvent.Type.WITHDRAWN
    assert (last.payload["by"], last.payload["reason"]) == (compliance_officer.username, "客服来电 #7781")
    assert "action-withdraw" not in officer_client.get(url("consent_change", consent.pk)).content.decode()


def test_withdraw_is_refused_to_the_auditor(client, auditor, consent):
    client.force_login(auditor)
    assert client.post(url("consent_withdraw", consent.pk), {"channel": "app", "reason": "x y z"}).status_code == 403
    consent.refresh_from_db()
    assert consent.status == Consent.Status.GRANTED


# --- consent texts -------------------------------------------------------------------------------------------
def test_compliance_adds_a_consent_text_through_the_service(officer_client, compliance_officer):
    body = "第一行\n  第二行（缩进保留）"
    response = officer_client.post(
        url("consenttext_add"),
        {"code": "referral-consent-v9", "language": "zh-hans", "body": body, "validity_days": 90, "_save": "1"},
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    text = ConsentText.objects.get(code="referral-consent-v9")
    assert text.body == body
    assert text.created_by == compliance_officer
    assert text.sha256 == hashlib.sha256(text.body.encode()).hexdigest()


@pytest.mark.parametrize("code", ["Referral V9", "x", "referral-consent-admin-v1"])
def test_a_consent_text_code_must_follow_the_api_rule_and_be_new(officer_client, admin_text, code):
    before = ConsentText.objects.count()
    response = officer_client.post(
        url("consenttext_add"), {"code": code, "language": "zh-hans", "body": "正文", "validity_days": 90}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors.get("code")
    assert ConsentText.objects.count() == before


def test_consent_text_page_shows_the_body_and_links_to_the_consents_that_used_it(
    officer_client, admin_text, applicant, other_applicant
):
    content = officer_client.get(url("consenttext_change", admin_text.pk)).content.decode()
    assert 'class="consent-text-body"' in content
    link = url("consent_changelist") + f"?text__id__exact={admin_text.pk}"
    assert "2 — <a" in content
    assert link in content
    response = officer_client.get(link)
    assert response.status_code == 200
    assert {c.applicant_id for c in response.context["cl"].result_list} == {applicant.pk, other_applicant.pk}


# --- bounded query counts --------------------------------------------------------------------------------------
@pytest.fixture
def twenty(origination, admin_text, named_partners, compliance_officer):
    """20 applicants (one batch through the API), their consents, some reveals and two checkpoints."""
    client = APIClient()
    client.force_authenticate(origination)
    items = [builders.intake_body(text=admin_text, seq=seq, partner_codes=["PARTNER_A"]) for seq in range(10, 30)]
    response = client.post("/api/v1/applicants/batch/", {"items": items}, format="json")
    assert [r["status"] for r in response.json()["results"]] == [201] * 20
    ledger_checkpoint()
    for applicant in Applicant.objects.all()[:5]:
        applicant_reveal(actor=compliance_officer, applicant=applicant, fields=["name"], reason="sample audit")
    ledger_checkpoint()
    return Applicant.objects.count()


@pytest.mark.parametrize(
    "changelist",
    [
        "applicant_changelist",
        "consent_changelist",
        "consenttext_changelist",
        "consentevent_changelist",
        "ledgercheckpoint_changelist",
    ],
)
def test_every_changelist_runs_a_bounded_number_of_queries(officer_client, twenty, changelist, page_queries):
    officer_client.get(url(changelist))  # warm the session and permission caches like a real visit
    with page_queries(10):
        response = officer_client.get(url(changelist))
    assert response.status_code == 200
    assert response.context["cl"].result_count >= 1


def test_the_applicant_detail_and_consent_page_run_a_bounded_number_of_queries(
    officer_client, twenty, django_assert_max_num_queries
):
    applicant = Applicant.objects.first()
    consent = applicant.consents.get()
    # Warm the per-process caches (content types, permissions) that an earlier test may have emptied.
    officer_client.get(url("applicant_change", applicant.pk))
    officer_client.get(url("consent_change", consent.pk))
    with django_assert_max_num_queries(10):
        assert officer_client.get(url("applicant_change", applicant.pk)).status_code == 200
    # ledger_verify reads each checkpoint's leaves once: bounded by checkpoints (two here), not by
    # events; plus one look-up of the checkpoint before the first when ids do not start at 1 (they
    # do not after an earlier test's rolled-back checkpoints on PostgreSQL).
    with django_assert_max_num_queries(15):
        assert officer_client.get(url("consent_change", consent.pk)).status_code == 200
