"""Shared set-up for the settlement tests: a partner under the worked example's contract."""

from __future__ import annotations

import pytest

from tests.factories import PartnerFactory, UserFactory, consent_text, make_contract
from tests.settlements.builders import PartnerSide

WORKED_EXAMPLE_FEES = {
    "application_fee": "30.00", "application_fee_tiers": [{"from_count": 3, "fee": "25.00"}],
    "approval_fee": "5.00", "disbursement_rate": "0.0100", "interest_share_rate": "0.2500", "vat_rate": "0.0600",
}  # fmt: skip
WORKED_EXAMPLE_CLAWBACK = {"fpd_days": 30, "duplicate_return_hours": 48}


@pytest.fixture
def partner(db):
    return PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司")


@pytest.fixture
def contract(partner, partnership_manager, compliance_officer):
    return make_contract(
        partner, drafter=partnership_manager, approver=compliance_officer,
        fees=WORKED_EXAMPLE_FEES, clawback=WORKED_EXAMPLE_CLAWBACK,
    )  # fmt: skip


@pytest.fixture
def text(compliance_officer):
    return consent_text(actor=compliance_officer)


@pytest.fixture
def origination_api(api, origination):
    return api(origination)


@pytest.fixture
def side(client, partner):
    return PartnerSide(client, partner)


@pytest.fixture
def second_finance_user(db):
    return UserFactory(username="finance2", roles=["finance"])


@pytest.fixture
def eager(settings):
    """Celery tasks run in-process when their transaction commits."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = True
