"""Which contract version governs a partner at a given moment."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from partners import selectors, services
from tests.factories import PartnerFactory, make_contract

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(day: str, hour: int = 12) -> datetime.datetime:
    return datetime.datetime.fromisoformat(day).replace(hour=hour, tzinfo=SHANGHAI)


@pytest.fixture
def partner(db):
    return PartnerFactory(code="PARTNER_A")


@pytest.fixture
def versions(partner, partnership_manager, compliance_officer):
    """v1 from 2026-11-01; v2 approved to start 2026-12-01; v3 a draft from 2027-01-01."""
    v1 = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    v2 = make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer, effective_from=datetime.date(2026, 12, 1)
    )
    v3 = make_contract(partner, drafter=partnership_manager, effective_from=datetime.date(2027, 1, 1))
    return v1, v2, v3


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (at("2026-10-31"), None),  # before anything started
        (at("2026-11-01", 0), "v1"),  # first day, midnight in Shanghai
        (at("2026-11-30", 23), "v1"),  # superseded but not yet ended
        (at("2026-12-01", 0), "v2"),
        (at("2027-06-01"), "v2"),  # a draft never governs anything
    ],
)
def test_version_in_force_across_versions_and_dates(versions, partner, moment, expected):
    names = dict(zip(("v1", "v2", "v3"), versions, strict=True))
    found = selectors.contract_in_force(partner=partner, at=moment)
    assert found == (names[expected] if expected else None)


def test_day_boundary_is_asia_shanghai(versions, partner):
    # 2026-11-30 16:30 UTC is already 2026-12-01 00:30 in Shanghai.
    moment = datetime.datetime(2026, 11, 30, 16, 30, tzinfo=datetime.UTC)
    assert selectors.contract_in_force(partner=partner, at=moment) == versions[1]


def test_pending_version_is_not_in_force(partner, partnership_manager):
    contract = make_contract(partner, drafter=partnership_manager)
    services.contract_submit(actor=partnership_manager, contract=contract)
    assert selectors.contract_in_force(partner=partner, at=at("2026-11-15")) is None


def test_termination_ends_a_version_at_once(partner, partnership_manager, compliance_officer):
    contract = make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    before = timezone.now()
    services.contract_terminate(actor=compliance_officer, contract=contract, reason="违约")
    assert selectors.contract_in_force(partner=partner) is None
    # …but it was in force before it was terminated: history is not rewritten.
    assert selectors.contract_in_force(partner=partner, at=before) == contract


def test_effective_to_is_inclusive(partner, partnership_manager, compliance_officer):
    make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer, effective_to=datetime.date(2026, 11, 15)
    )
    assert selectors.contract_in_force(partner=partner, at=at("2026-11-15", 23)) is not None
    assert selectors.contract_in_force(partner=partner, at=at("2026-11-16", 0)) is None


def test_many_partners_in_one_query(partnership_manager, compliance_officer, django_assert_num_queries):
    partners = [PartnerFactory(code=f"PARTNER_{i}") for i in range(5)]
    for p in partners[:4]:
        make_contract(p, drafter=partnership_manager, approver=compliance_officer)
    with django_assert_num_queries(1):
        found = selectors.contracts_in_force(partner_ids=[p.pk for p in partners], at=at("2026-11-20"))
    assert set(found) == {p.pk for p in partners[:4]}
