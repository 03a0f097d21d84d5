"""``manage.py seed_demo``: demo logins for every role and four partners under approved contracts."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token
from stdnum.cn import uscc

from partners.management.commands.seed_demo import DEMO_PARTNERS, DEMO_USERS, format_logins_table
from partners.models import Contract, Partner
from tests.factories import ensure_roles

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _roles():
    """seed_demo needs the migrations' groups, which an earlier transactional test's flush empties."""
    ensure_roles()


@pytest.fixture
def debug_on(settings):
    settings.DEBUG = True
    settings.SPILLWAY_SIMULATOR_URL = "http://127.0.0.1:9100"


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def snapshot() -> dict[str, object]:
    """Everything a second run could touch: row counts, history rows, password hashes, tokens."""
    return {
        "users": User.objects.count(),
        "partners": Partner.objects.count(),
        "contracts": Contract.objects.count(),
        "tokens": sorted(Token.objects.values_list("key", flat=True)),
        "partner_history": Partner.history.count(),
        "contract_history": Contract.history.count(),
        "passwords": dict(User.objects.values_list("username", "password")),
        "groups": sorted(User.objects.values_list("username", "groups__name")),
        "contract_rows": sorted(Contract.objects.values_list("partner__code", "version", "status", "updated_at")),
    }


def test_refuses_to_run_with_debug_off(settings):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG"):
        seed()

    assert not User.objects.filter(username="admin").exists()
    assert Partner.objects.count() == 0


def test_force_runs_with_debug_off(settings):
    settings.DEBUG = False

    seed("--force")

    assert Partner.objects.count() == len(DEMO_PARTNERS)


def test_running_twice_changes_nothing(debug_on):
    first_output = seed()
    before = snapshot()

    second_output = seed()

    assert snapshot() == before
    assert before["partners"] == 4
    assert "Created:" in first_output
    assert "nothing changed" in second_output


def test_one_user_per_role_a_second_compliance_officer_and_a_superuser(debug_on):
    seed()

    for spec in DEMO_USERS:
        user = User.objects.get(username=spec.username)
        assert user.is_staff == spec.is_staff
        if spec.role:
            assert list(user.groups.values_list("name", flat=True)) == [spec.role]
        if spec.password:
            assert user.check_password(spec.password)
    roles = {spec.role for spec in DEMO_USERS}
    assert roles >= {"compliance_officer", "partnership_manager", "operations", "finance", "auditor", "origination"}
    assert User.objects.filter(groups__name="compliance_officer").count() == 2
    assert User.objects.get(username="admin").is_superuser


def test_origination_is_a_non_staff_service_account_with_a_printed_token(debug_on):
    output = seed()

    origination = User.objects.get(username="origination")
    assert not origination.is_staff
    assert not origination.has_usable_password()
    assert Token.objects.get(user=origination).key in output


def test_logins_table_lists_username_role_and_password(debug_on):
    output = seed()

    for spec in DEMO_USERS:
        if spec.password:
            assert any(
                line.split() == [spec.username, spec.role_label, spec.password] for line in output.splitlines()
            ), spec.username
    assert format_logins_table() in output


def test_logins_only_prints_the_table_and_creates_nothing(debug_on):
    output = seed("--logins-only")

    assert "No demo users yet" in output
    assert User.objects.count() == 0


def test_reset_passwords_restores_a_changed_demo_password(debug_on):
    seed()
    user = User.objects.get(username="finance")
    user.set_password("changed-by-someone")
    user.save()

    seed()
    assert not User.objects.get(username="finance").check_password("finance-demo-2026")
    seed("--reset-passwords")
    assert User.objects.get(username="finance").check_password("finance-demo-2026")


def test_partners_are_active_valid_and_point_at_the_simulator(debug_on):
    seed()

    partners = list(Partner.objects.order_by("code"))
    assert len(partners) == 4
    for partner in partners:
        partner.full_clean()
        assert partner.status == Partner.Status.ACTIVE
        assert uscc.is_valid(partner.credit_code)
        assert partner.has_pia
        assert partner.api_base_url == f"http://127.0.0.1:9100/{partner.code.lower()}"
        assert partner.api_secret
    assert len({p.credit_code for p in partners}) == 4
    assert [p.code for p in partners if p.weak_phone_hash] == ["ANXIN_MICRO"]
    assert Partner.objects.get(code="ANXIN_MICRO").phone_hash == Partner.PhoneHash.SHA256


def test_contracts_are_active_and_approved_by_someone_other_than_their_creator(debug_on):
    seed()

    active = Contract.objects.filter(status=Contract.Status.ACTIVE).select_related("partner")
    assert sorted(c.partner.code for c in active) == sorted(p.code for p in DEMO_PARTNERS)
    for contract in active:
        assert contract.approved_by_id is not None
        assert contract.approved_by_id != contract.created_by_id
        assert contract.created_by.groups.filter(name="partnership_manager").exists()
        assert contract.approved_by.groups.filter(name="compliance_officer").exists()
    assert len({c.priority for c in active}) == 4
    assert len({c.fees["application_fee"] for c in active}) == 4
    assert {c.reclaim["allowed"] for c in active} == {True, False}


def test_one_partner_has_provinces_limited_to_shanghai_and_jiangsu(debug_on):
    seed()

    limited = [c for c in Contract.objects.filter(status=Contract.Status.ACTIVE) if c.eligibility["provinces"]]
    assert [c.eligibility["provinces"] for c in limited] == [["310000", "320000"]]


def test_one_partner_has_a_second_version_pending_approval(debug_on):
    seed()

    (pending,) = Contract.objects.filter(status=Contract.Status.PENDING_APPROVAL)
    active = Contract.objects.get(partner=pending.partner, status=Contract.Status.ACTIVE)
    assert pending.version == 2
    assert active.version == 1
    assert pending.fees != active.fees
    assert pending.effective_from > active.effective_from
