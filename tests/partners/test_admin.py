"""The back office for partners and contract versions: who may see and do what, and that every
save and every transition goes through the services' rules (PIA gating, four-eyes, drafts only)."""

from __future__ import annotations

import datetime
import json
import re

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from partners import services
from partners.models import Contract, Partner
from tests.factories import PartnerFactory, UserFactory, contract_terms, credit_code, make_contract

ROLES = ["compliance_officer", "partnership_manager", "operations", "finance", "auditor", "origination", "outsider"]
STAFF = {"compliance_officer", "partnership_manager", "operations", "finance", "auditor"}
NOV_1, DEC_1, JAN_1 = datetime.date(2026, 11, 1), datetime.date(2026, 12, 1), datetime.date(2027, 1, 1)


# --- helpers --------------------------------------------------------------------------------------
def url(name: str, *args) -> str:
    return reverse(f"admin:partners_{name}", args=args)


def transition_url(contract: Contract, name: str) -> str:
    return url("contract_transition", contract.pk, name)


def message_levels(response) -> list[str]:
    return [message.level_tag for message in get_messages(response.wsgi_request)]


def partner_post(partner: Partner, **overrides) -> dict:
    """The partner change form as a browser posts it (the secret left blank)."""
    data = {
        "name": partner.name,
        "license_type": partner.license_type,
        "credit_code": partner.credit_code,
        "status": partner.status,
        "contact_email": partner.contact_email,
        "contact_phone": partner.contact_phone,
        "api_base_url": partner.api_base_url,
        "api_secret": "",
        "phone_hash": partner.phone_hash,
        "timeout_ms": partner.timeout_ms,
        "max_requests_per_second": partner.max_requests_per_second,
        "connector": partner.connector,
        "pia_reference": partner.pia_reference,
        "pia_completed_on": partner.pia_completed_on.isoformat() if partner.pia_completed_on else "",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def contract_post(**overrides) -> dict:
    """The contract form as a browser posts it: JSON terms in text areas, blank for None."""
    data = {}
    for key, value in contract_terms(**overrides).items():
        if isinstance(value, dict | list):
            data[key] = json.dumps(value)
        elif isinstance(value, datetime.date):
            data[key] = value.isoformat()
        else:
            data[key] = "" if value is None else value
    data["_save"] = "Save"
    return data


def html_table(content: str, css_class: str) -> str:
    match = re.search(rf'<table class="{css_class}">.*?</table>', content, re.S)
    assert match, f"no table.{css_class} on the page"
    return match.group(0)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def partner(db):
    return PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司", api_secret="s3cret-a-plaintext")


@pytest.fixture
def both_roles(db):
    """May both draft and approve: four-eyes must still stop them on their own drafts."""
    return UserFactory(username="both", roles=["partnership_manager", "compliance_officer"])


@pytest.fixture
def versions(partner, partnership_manager, compliance_officer):
    """PARTNER_A with v1 active, v2 pending approval (fee raised to 45.00) and v3 a draft."""
    active = make_contract(partner, drafter=partnership_manager, approver=compliance_officer, effective_from=NOV_1)
    fees = {**contract_terms()["fees"], "application_fee": "45.00"}
    pending = make_contract(partner, drafter=partnership_manager, effective_from=DEC_1, fees=fees)
    pending = services.contract_submit(actor=partnership_manager, contract=pending)
    draft = make_contract(partner, drafter=partnership_manager, effective_from=JAN_1)
    return {"active": active, "pending": pending, "draft": draft}


# --- who may open which page ----------------------------------------------------------------------
# page → the staff roles that get it (everyone else on staff gets 403; non-staff go to the login).
PAGES = {
    "partner changelist": STAFF,
    "partner add": {"partnership_manager"},
    "partner change": STAFF,
    "contract changelist": STAFF,
    "contract add": {"partnership_manager"},
    "contract change": STAFF,
    "submit": {"partnership_manager"},
    "approve": {"compliance_officer"},
    "reject": {"compliance_officer"},
    "terminate": {"compliance_officer", "partnership_manager"},
}


def page_url(page: str, partner: Partner, versions: dict) -> str:
    return {
        "partner changelist": url("partner_changelist"),
        "partner add": url("partner_add"),
        "partner change": url("partner_change", partner.pk),
        "contract changelist": url("contract_changelist"),
        "contract add": url("contract_add"),
        "contract change": url("contract_change", versions["draft"].pk),
        "submit": transition_url(versions["draft"], "submit"),
        "approve": transition_url(versions["pending"], "approve"),
        "reject": transition_url(versions["pending"], "reject"),
        "terminate": transition_url(versions["active"], "terminate"),
    }[page]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("admin_page", list(PAGES))
def test_each_role_sees_only_the_admin_pages_its_permissions_allow(client, cast, partner, versions, role, admin_page):
    client.force_login(cast[role])
    target = page_url(admin_page, partner, versions)
    response = client.get(target)
    if role not in STAFF:
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    elif role in PAGES[admin_page]:
        assert response.status_code == 200
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("role", sorted(STAFF))
@pytest.mark.parametrize("admin_page", ["partner change", "contract change"])
def test_only_partnership_managers_get_an_editable_form(client, cast, partner, versions, role, admin_page):
    client.force_login(cast[role])
    content = client.get(page_url(admin_page, partner, versions)).content.decode()
    assert ('name="_save"' in content) is (role == "partnership_manager")


@pytest.mark.parametrize("role", sorted(STAFF - {"partnership_manager"}))
def test_read_only_roles_cannot_post_changes(client, cast, partner, versions, role):
    client.force_login(cast[role])
    assert client.post(url("partner_change", partner.pk), partner_post(partner, name="改名")).status_code == 403
    draft = versions["draft"]
    assert client.post(url("contract_change", draft.pk), contract_post(priority=99)).status_code == 403
    assert client.post(url("contract_add"), {**contract_post(), "partner": partner.pk}).status_code == 403
    partner.refresh_from_db()
    draft.refresh_from_db()
    assert (partner.name, draft.priority, Contract.objects.count()) == ("甲消费金融有限公司", 10, 3)


@pytest.mark.parametrize(
    ("role", "state", "buttons"),
    [
        ("partnership_manager", "draft", {"submit"}),
        ("compliance_officer", "draft", set()),
        ("partnership_manager", "pending", set()),
        ("compliance_officer", "pending", {"approve", "reject"}),
        ("partnership_manager", "active", {"terminate"}),
        ("compliance_officer", "active", {"terminate"}),
        ("operations", "active", set()),
        ("auditor", "pending", set()),
    ],
)
def test_transition_buttons_follow_permission_and_status(client, cast, versions, role, state, buttons):
    client.force_login(cast[role])
    content = client.get(url("contract_change", versions[state].pk)).content.decode()
    shown = set(re.findall(r'class="transition-link transition-(\w+)"', content))
    assert shown == buttons


@pytest.mark.parametrize(
    ("role", "actions"),
    [
        ("partnership_manager", {"submit_selected"}),
        ("compliance_officer", {"approve_selected"}),
        ("operations", set()),
        ("finance", set()),
        ("auditor", set()),
    ],
)
def test_bulk_actions_are_offered_by_permission_and_delete_never(client, cast, versions, role, actions):
    client.force_login(cast[role])
    response = client.get(url("contract_changelist"))
    action_form = response.context["action_form"]
    offered = {name for name, _label in action_form.fields["action"].choices if name} if action_form else set()
    assert offered == actions


# --- partners -------------------------------------------------------------------------------------
def test_partner_changelist_is_ordered_by_code_and_flags_weak_phone_hashes(client, operations_user):
    PartnerFactory(code="ZETA", phone_hash=Partner.PhoneHash.MD5)
    PartnerFactory(code="ALPHA", phone_hash=Partner.PhoneHash.HMAC_SHA256)
    PartnerFactory(code="MID", phone_hash=Partner.PhoneHash.SHA256, pia_reference="", pia_completed_on=None,
                   status=Partner.Status.ONBOARDING)  # fmt: skip
    client.force_login(operations_user)
    response = client.get(url("partner_changelist"))
    assert [p.code for p in response.context["cl"].result_list] == ["ALPHA", "MID", "ZETA"]
    content = response.content.decode()
    assert content.count('class="phone-hash-weak"') == 2
    # PIA on record is a boolean column: two yes icons, one no icon.
    assert content.count("icon-yes.svg") == 2
    assert content.count("icon-no.svg") == 1


def test_partner_changelist_query_count_does_not_grow_with_rows(client, operations_user):
    PartnerFactory.create_batch(2)
    client.force_login(operations_user)
    with CaptureQueriesContext(connection) as few:
        assert client.get(url("partner_changelist")).status_code == 200
    PartnerFactory.create_batch(30, phone_hash=Partner.PhoneHash.MD5)
    with CaptureQueriesContext(connection) as many:
        response = client.get(url("partner_changelist"))
    assert len(response.context["cl"].result_list) == 32
    assert len(many) <= len(few)


def test_partner_changelist_runs_a_bounded_number_of_queries(client, operations_user, django_assert_max_num_queries):
    PartnerFactory.create_batch(30)
    client.force_login(operations_user)
    with django_assert_max_num_queries(10):
        assert client.get(url("partner_changelist")).status_code == 200


def test_partner_search_by_code_and_name(client, auditor):
    PartnerFactory(code="BANK_B", name="乙银行股份有限公司")
    PartnerFactory(code="LOAN_C", name="丙小额贷款有限公司")
    client.force_login(auditor)
    by_code = client.get(url("partner_changelist"), {"q": "BANK_B"}).context["cl"].result_list
    by_name = client.get(url("partner_changelist"), {"q": "小额贷款"}).context["cl"].result_list
    assert [p.code for p in by_code] == ["BANK_B"]
    assert [p.code for p in by_name] == ["LOAN_C"]


@pytest.mark.parametrize("role", ["partnership_manager", "auditor"])
def test_api_secret_never_appears_on_the_partner_page(client, cast, partner, role):
    client.force_login(cast[role])
    content = client.get(url("partner_change", partner.pk)).content.decode()
    assert "s3cret-a-plaintext" not in content
    stored = Partner.objects.filter(pk=partner.pk).values_list("api_secret", flat=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_secret FROM partners_partner WHERE id = %s", [partner.pk])
        (ciphertext,) = cursor.fetchone()
    assert ciphertext not in content
    assert list(stored) == ["s3cret-a-plaintext"]
    if role == "partnership_manager":
        field = re.search(r'<input[^>]*name="api_secret"[^>]*>', content).group(0)
        assert 'type="password"' in field
        assert "value=" not in field


def test_blank_api_secret_keeps_the_current_one(client, partnership_manager, partner):
    changed_at = partner.api_secret_changed_at
    client.force_login(partnership_manager)
    response = client.post(url("partner_change", partner.pk), partner_post(partner, name="甲消费金融股份有限公司"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    partner.refresh_from_db()
    assert partner.name == "甲消费金融股份有限公司"
    assert partner.api_secret == "s3cret-a-plaintext"
    assert partner.api_secret_changed_at == changed_at


def test_a_typed_api_secret_rotates_it(client, partnership_manager, partner):
    client.force_login(partnership_manager)
    response = client.post(url("partner_change", partner.pk), partner_post(partner, api_secret="rotated-secret-2"))
    assert response.status_code == 302
    partner.refresh_from_db()
    assert partner.api_secret == "rotated-secret-2"
    assert partner.api_secret_changed_at is not None
    assert partner.history.latest().history_user == partnership_manager


def test_adding_a_partner_requires_a_secret_and_goes_through_the_service(client, partnership_manager):
    new = PartnerFactory.build(code="PARTNER_NEW", credit_code=credit_code(777), status=Partner.Status.ONBOARDING)
    client.force_login(partnership_manager)
    add_page = client.get(url("partner_add")).content.decode()
    change_page = client.get(url("partner_change", PartnerFactory(code="OLD").pk)).content.decode()
    assert '<label class="required" for="id_api_secret">' in add_page
    assert '<label for="id_api_secret">' in change_page  # optional there: blank keeps the secret
    data = {**partner_post(new), "code": "PARTNER_NEW"}

    response = client.post(url("partner_add"), data)
    assert response.status_code == 200
    assert "api_secret" in response.context["adminform"].form.errors
    assert not Partner.objects.filter(code="PARTNER_NEW").exists()

    response = client.post(url("partner_add"), {**data, "api_secret": "first-secret"})
    assert response.status_code == 302
    created = Partner.objects.get(code="PARTNER_NEW")
    assert created.api_secret == "first-secret"
    assert created.api_secret_changed_at is not None  # set by services.partner_create
    assert created.history.get().history_user == partnership_manager


def test_a_partner_cannot_be_activated_without_a_pia(client, partnership_manager):
    partner = PartnerFactory(code="NO_PIA", status=Partner.Status.ONBOARDING, pia_reference="", pia_completed_on=None)
    history_rows = partner.history.count()
    client.force_login(partnership_manager)

    response = client.post(url("partner_change", partner.pk), partner_post(partner, status="active", name="新名字"))

    assert response.status_code == 200
    assert "status" in response.context["adminform"].form.errors
    assert 'class="errorlist' in response.content.decode()
    partner.refresh_from_db()
    assert (partner.status, partner.name) == ("onboarding", partner.name)
    assert partner.name != "新名字"
    assert partner.history.count() == history_rows


def test_a_partner_with_a_pia_can_be_activated_in_the_same_save(client, partnership_manager):
    partner = PartnerFactory(code="NO_PIA", status=Partner.Status.ONBOARDING, pia_reference="", pia_completed_on=None)
    client.force_login(partnership_manager)
    data = partner_post(partner, status="active", pia_reference="PIA-2026-099", pia_completed_on="2026-10-01")
    assert client.post(url("partner_change", partner.pk), data).status_code == 302
    partner.refresh_from_db()
    assert (partner.status, partner.pia_reference) == ("active", "PIA-2026-099")


def test_an_impossible_status_change_is_a_form_error_not_a_500(client, partnership_manager):
    partner = PartnerFactory(code="GONE", status=Partner.Status.OFFBOARDED)
    client.force_login(partnership_manager)
    response = client.post(url("partner_change", partner.pk), partner_post(partner, status="active"))
    assert response.status_code == 200
    assert "status" in response.context["adminform"].form.errors
    partner.refresh_from_db()
    assert partner.status == "offboarded"


def test_status_is_read_only_without_the_status_permission(client, db):
    from django.contrib.auth.models import Permission

    editor = UserFactory(username="editor")
    editor.user_permissions.add(*Permission.objects.filter(codename__in=["view_partner", "change_partner"]))
    partner = PartnerFactory(code="PARTNER_S", status=Partner.Status.ACTIVE)
    client.force_login(editor)
    response = client.post(url("partner_change", partner.pk), partner_post(partner, status="suspended"))
    assert response.status_code == 302
    partner.refresh_from_db()
    assert partner.status == "active"


def test_partner_history_shows_who_changed_what_and_cannot_be_reverted(client, partnership_manager, auditor, partner):
    client.force_login(partnership_manager)
    client.post(url("partner_change", partner.pk), partner_post(partner, name="甲消费金融股份有限公司"))
    client.force_login(auditor)
    content = client.get(url("partner_history", partner.pk)).content.decode()
    assert "partnerships" in content
    first = partner.history.earliest()
    revert = reverse("admin:partners_partner_simple_history", args=[partner.pk, first.history_id])
    client.force_login(partnership_manager)
    assert client.post(revert, partner_post(partner)).status_code == 403
    partner.refresh_from_db()
    assert partner.name == "甲消费金融股份有限公司"


# --- contracts: the changelist --------------------------------------------------------------------
def make_versions(partner_count: int, drafters: list, approver) -> None:
    """Per partner: v1 superseded, v2 active, v3 draft, each drafter in turn."""
    for i in range(partner_count):
        partner = PartnerFactory(license_type=[Partner.LicenseType.BANK, Partner.LicenseType.MICROLOAN][i % 2])
        drafter = drafters[i % len(drafters)]
        make_contract(partner, drafter=drafter, approver=approver, effective_from=NOV_1)
        make_contract(partner, drafter=drafter, approver=approver, effective_from=DEC_1)
        make_contract(partner, drafter=drafter, effective_from=JAN_1)


def test_contract_changelist_query_count_does_not_grow_with_rows(
    client, compliance_officer, partnership_manager, django_assert_max_num_queries
):
    second_manager = UserFactory(username="partnerships2", roles=["partnership_manager"])
    make_versions(1, [partnership_manager], compliance_officer)
    client.force_login(compliance_officer)
    with CaptureQueriesContext(connection) as few:
        assert client.get(url("contract_changelist")).status_code == 200

    make_versions(10, [partnership_manager, second_manager], compliance_officer)
    with django_assert_max_num_queries(len(few)):
        response = client.get(url("contract_changelist"))
    rows = response.context["cl"].result_list
    assert len(rows) == 33
    assert {row.created_by.username for row in rows} == {"partnerships", "partnerships2"}
    content = response.content.decode()
    assert content.count("compliance") >= 22  # approved_by shown for every approved version


def test_contract_changelist_runs_a_bounded_number_of_queries(
    client, compliance_officer, partnership_manager, django_assert_max_num_queries
):
    make_versions(10, [partnership_manager], compliance_officer)
    client.force_login(compliance_officer)
    with django_assert_max_num_queries(12):
        assert client.get(url("contract_changelist")).status_code == 200


def test_contract_changelist_is_newest_first_and_filters_by_license_type(client, auditor, versions):
    bank = PartnerFactory(code="BANK_B", license_type=Partner.LicenseType.BANK)
    bank_version = make_contract(bank, drafter=versions["draft"].created_by)
    client.force_login(auditor)
    rows = client.get(url("contract_changelist")).context["cl"].result_list
    assert rows[0] == bank_version
    assert [c.created_at for c in rows] == sorted((c.created_at for c in rows), reverse=True)
    filtered = client.get(url("contract_changelist"), {"partner__license_type__exact": "bank"}).context["cl"]
    assert list(filtered.result_list) == [bank_version]
    searched = client.get(url("contract_changelist"), {"q": "BANK_B"}).context["cl"]
    assert list(searched.result_list) == [bank_version]


# --- contracts: reading the terms -----------------------------------------------------------------
def test_change_page_shows_the_terms_as_a_table(client, auditor, versions):
    client.force_login(auditor)
    content = client.get(url("contract_change", versions["active"].pk)).content.decode()
    table = html_table(content, "spillway-terms")
    for term, value in [
        ("eligibility.min_amount", "1000.00"),
        ("eligibility.terms_months", "3, 6, 12, 24"),
        ("eligibility.credit_grades", "B, C, D"),
        ("data_fields", "national_id (identity)"),
        ("daily_cap", "5000"),
        ("dedupe_days", "30"),
        ("fees.application_fee", "30.00"),
        ("fees.application_fee_tiers", "1001"),
        ("fees.interest_share_rate", "25.00%"),
        ("clawback.fpd_days", "30"),
        ("reclaim.fee", "200.00"),
    ]:
        row = re.search(rf'<tr data-term="{re.escape(term)}">(.*?)</tr>', table, re.S)
        assert row, term
        assert value in row.group(1), (term, row.group(1))


def test_change_page_shows_what_changed_from_the_previous_version(client, compliance_officer, versions):
    client.force_login(compliance_officer)
    content = client.get(url("contract_change", versions["pending"].pk)).content.decode()
    diff = html_table(content, "spillway-terms-diff")
    row = re.search(r'<tr data-term="fees.application_fee">(.*?)</tr>', diff).group(1)
    assert row.endswith("<td>30.00</td><td>45.00</td>")  # term, previous, this version
    assert 'data-term="effective_from"' in diff
    assert 'data-term="fees.vat_rate"' not in diff  # unchanged terms are not listed
    # The approver sees the same difference on the confirmation page.
    confirm = client.get(transition_url(versions["pending"], "approve")).content.decode()
    assert 'data-term="fees.application_fee"' in html_table(confirm, "spillway-terms-diff")


def test_the_first_version_has_no_diff_table(client, auditor, partner, partnership_manager):
    first = make_contract(partner, drafter=partnership_manager)
    client.force_login(auditor)
    content = client.get(url("contract_change", first.pk)).content.decode()
    assert 'class="spillway-terms"' in content
    assert 'class="spillway-terms-diff"' not in content


def test_stored_terms_are_escaped_on_the_page(client, auditor, versions):
    # Written past the validators on purpose: whatever is stored, the page must not run it.
    evil = "<script>alert(1)</script>"
    eligibility = {**versions["draft"].eligibility, "decline_reasons": [evil], "<b>odd</b>": evil}
    Contract.objects.filter(pk=versions["draft"].pk).update(eligibility=eligibility)
    client.force_login(auditor)
    content = client.get(url("contract_change", versions["draft"].pk)).content.decode()
    assert evil not in content
    assert "<b>odd</b>" not in content
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_table(content, "spillway-terms")


def test_change_page_shows_the_approval_record_read_only(client, auditor, versions):
    client.force_login(auditor)
    response = client.get(url("contract_change", versions["active"].pk))
    readonly = response.context["adminform"].readonly_fields
    for field in ("created_by", "last_edited_by", "submitted_by", "submitted_at", "approved_by", "approved_at",
                  "rejection_reason", "terminated_by", "terminated_at", "termination_reason"):  # fmt: skip
        assert field in readonly


# --- contracts: drafting and editing --------------------------------------------------------------
def test_adding_a_contract_drafts_the_next_version_through_the_service(client, partnership_manager, versions):
    partner = versions["draft"].partner
    client.force_login(partnership_manager)
    fees = {**contract_terms()["fees"], "vat_rate": "0.06", "application_fee": "28"}
    data = {**contract_post(effective_from=datetime.date(2027, 2, 1), fees=fees), "partner": partner.pk}
    response = client.post(url("contract_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    created = Contract.objects.get(partner=partner, version=4)
    assert (created.status, created.created_by, created.last_edited_by) == (
        "draft", partnership_manager, partnership_manager,
    )  # fmt: skip
    assert created.fees["vat_rate"] == "0.0600"  # normalised by the service's full_clean
    assert created.fees["application_fee"] == "28.00"


def test_bad_terms_on_the_add_form_are_form_errors_and_save_nothing(client, partnership_manager, partner):
    client.force_login(partnership_manager)
    fees = {**contract_terms()["fees"], "interest_share_rate": "1.5"}
    data = {**contract_post(fees=fees), "partner": partner.pk}
    response = client.post(url("contract_add"), data)
    assert response.status_code == 200
    assert "fees" in response.context["adminform"].form.errors
    assert not Contract.objects.exists()


def test_editing_a_draft_goes_through_the_service(client, partnership_manager, versions):
    editor = UserFactory(username="partnerships2", roles=["partnership_manager"])
    draft = versions["draft"]
    client.force_login(editor)
    response = client.post(url("contract_change", draft.pk), contract_post(effective_from=JAN_1, priority=20))
    assert response.status_code == 302, response.context["adminform"].form.errors
    draft.refresh_from_db()
    assert (draft.priority, draft.last_edited_by, draft.created_by.username) == (20, editor, "partnerships")
    assert draft.history.latest().history_user == editor


@pytest.mark.parametrize("state", ["pending", "active"])
def test_a_non_draft_version_is_read_only_even_for_its_drafter(client, partnership_manager, versions, state):
    contract = versions[state]
    client.force_login(partnership_manager)
    response = client.get(url("contract_change", contract.pk))
    assert response.status_code == 200
    assert 'name="_save"' not in response.content.decode()
    assert client.post(url("contract_change", contract.pk), contract_post(priority=99)).status_code == 403
    contract.refresh_from_db()
    assert contract.priority == 10


# --- contracts: transitions -----------------------------------------------------------------------
def test_submit_from_the_admin(client, partnership_manager, versions):
    draft = versions["draft"]
    client.force_login(partnership_manager)
    response = client.post(transition_url(draft, "submit"))
    assert response.status_code == 302
    assert response["Location"] == url("contract_change", draft.pk)
    assert message_levels(response) == ["success"]
    draft.refresh_from_db()
    assert (draft.status, draft.submitted_by) == ("pending_approval", partnership_manager)


def test_four_eyes_the_drafter_cannot_approve_through_the_admin(client, both_roles, partner):
    contract = make_contract(partner, drafter=both_roles)
    services.contract_submit(actor=both_roles, contract=contract)
    client.force_login(both_roles)

    response = client.post(transition_url(contract, "approve"))

    assert response.status_code == 302
    assert response["Location"] == url("contract_change", contract.pk)
    assert message_levels(response) == ["error"]
    contract.refresh_from_db()
    assert (contract.status, contract.approved_by) == ("pending_approval", None)


def test_four_eyes_the_last_editor_cannot_approve_either(client, both_roles, partner, partnership_manager):
    contract = make_contract(partner, drafter=partnership_manager)
    services.contract_update(actor=both_roles, contract=contract, data={"priority": 11})
    services.contract_submit(actor=partnership_manager, contract=contract)
    client.force_login(both_roles)
    response = client.post(
        url("contract_changelist"), {"action": "approve_selected", "_selected_action": [contract.pk]}
    )
    assert response.status_code == 302
    assert message_levels(response) == ["error"]
    contract.refresh_from_db()
    assert contract.status == "pending_approval"


def test_approval_by_a_second_person_puts_the_version_in_force_and_supersedes_the_old_one(
    client, compliance_officer, versions
):
    client.force_login(compliance_officer)
    response = client.post(transition_url(versions["pending"], "approve"))
    assert response.status_code == 302
    assert message_levels(response) == ["success"]
    new, old = versions["pending"], versions["active"]
    new.refresh_from_db()
    old.refresh_from_db()
    assert (new.status, new.approved_by) == ("active", compliance_officer)
    assert old.status == "superseded"
    assert old.effective_to == DEC_1 - datetime.timedelta(days=1)
    history = client.get(url("contract_history", new.pk)).content.decode()
    assert "compliance" in history


def test_reject_needs_a_typed_reason(client, compliance_officer, versions):
    pending = versions["pending"]
    client.force_login(compliance_officer)

    response = client.post(transition_url(pending, "reject"), {"reason": "   "})
    assert response.status_code == 200
    assert "reason" in response.context["form"].errors
    pending.refresh_from_db()
    assert pending.status == "pending_approval"

    response = client.post(transition_url(pending, "reject"), {"reason": "首逾退费条款与主协议不一致"})
    assert response.status_code == 302
    pending.refresh_from_db()
    assert (pending.status, pending.rejection_reason) == ("draft", "首逾退费条款与主协议不一致")


def test_reject_and_terminate_pages_ask_for_a_reason_and_submit_does_not(client, partnership_manager, versions):
    client.force_login(partnership_manager)
    assert 'name="reason"' in client.get(transition_url(versions["active"], "terminate")).content.decode()
    assert 'name="reason"' not in client.get(transition_url(versions["draft"], "submit")).content.decode()


def test_terminate_needs_a_reason_and_ends_the_version(client, partnership_manager, versions):
    active = versions["active"]
    client.force_login(partnership_manager)
    assert client.post(transition_url(active, "terminate"), {}).status_code == 200
    active.refresh_from_db()
    assert active.status == "active"
    response = client.post(transition_url(active, "terminate"), {"reason": "合作方被监管处罚"})
    assert response.status_code == 302
    active.refresh_from_db()
    assert (active.status, active.terminated_by, active.termination_reason) == (
        "terminated", partnership_manager, "合作方被监管处罚",
    )  # fmt: skip


def test_a_transition_the_status_does_not_allow_is_an_error_message(client, compliance_officer, versions):
    draft = versions["draft"]
    client.force_login(compliance_officer)
    response = client.post(transition_url(draft, "approve"))
    assert response.status_code == 302
    assert message_levels(response) == ["error"]
    draft.refresh_from_db()
    assert draft.status == "draft"


@pytest.mark.parametrize(
    ("role", "state", "name"),
    [
        ("partnership_manager", "pending", "approve"),
        ("partnership_manager", "pending", "reject"),
        ("compliance_officer", "draft", "submit"),
        ("operations", "active", "terminate"),
        ("auditor", "pending", "approve"),
    ],
)
def test_posting_a_transition_without_its_permission_is_refused(client, cast, versions, role, state, name):
    contract = versions[state]
    client.force_login(cast[role])
    assert client.post(transition_url(contract, name), {"reason": "no"}).status_code == 403
    before = contract.status
    contract.refresh_from_db()
    assert contract.status == before


def test_unknown_transition_or_contract_is_a_404(client, compliance_officer, versions):
    client.force_login(compliance_officer)
    assert client.get(transition_url(versions["pending"], "delete")).status_code == 404
    assert client.get(url("contract_transition", 999999, "approve")).status_code == 404


def test_bulk_submit_reports_successes_and_failures(client, partnership_manager, versions, partner):
    second = make_contract(PartnerFactory(code="PARTNER_B"), drafter=partnership_manager)
    client.force_login(partnership_manager)
    selected = [versions["draft"].pk, second.pk, versions["active"].pk]
    response = client.post(url("contract_changelist"), {"action": "submit_selected", "_selected_action": selected})
    assert response.status_code == 302
    assert sorted(message_levels(response)) == ["error", "success"]
    statuses = dict(Contract.objects.filter(pk__in=selected).values_list("pk", "status"))
    assert statuses == {
        versions["draft"].pk: "pending_approval",
        second.pk: "pending_approval",
        versions["active"].pk: "active",
    }


def test_bulk_approve_approves_each_version_it_may(client, compliance_officer, partnership_manager, both_roles):
    mine = make_contract(PartnerFactory(code="PARTNER_B"), drafter=both_roles)
    theirs = make_contract(PartnerFactory(code="PARTNER_C"), drafter=partnership_manager)
    for contract in (mine, theirs):
        services.contract_submit(actor=contract.created_by, contract=contract)
    client.force_login(both_roles)
    response = client.post(
        url("contract_changelist"), {"action": "approve_selected", "_selected_action": [mine.pk, theirs.pk]}
    )
    assert response.status_code == 302
    assert sorted(message_levels(response)) == ["error", "success"]
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert (mine.status, theirs.status, theirs.approved_by) == ("pending_approval", "active", both_roles)


def test_bulk_approve_is_refused_to_those_without_the_permission(client, partnership_manager, versions):
    client.force_login(partnership_manager)
    client.post(
        url("contract_changelist"), {"action": "approve_selected", "_selected_action": [versions["pending"].pk]}
    )
    versions["pending"].refresh_from_db()
    assert versions["pending"].status == "pending_approval"


def test_contract_history_cannot_be_reverted(client, partnership_manager, versions):
    draft = versions["draft"]
    services.contract_update(actor=partnership_manager, contract=draft, data={"priority": 30})
    first = draft.history.earliest()
    client.force_login(partnership_manager)
    revert = reverse("admin:partners_contract_simple_history", args=[draft.pk, first.history_id])
    assert client.get(revert).status_code == 200
    assert client.post(revert, contract_post(priority=10)).status_code == 403
    draft.refresh_from_db()
    assert draft.priority == 30
