"""Shared set-up for the referrals tests: two partners, a consent text, an origination client."""

from __future__ import annotations

import pytest

from tests.factories import PartnerFactory, consent_text, intake_payload


@pytest.fixture
def partners(db):
    return [
        PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司"),
        PartnerFactory(code="PARTNER_B", name="乙银行股份有限公司"),
    ]


@pytest.fixture
def text(compliance_officer):
    return consent_text(actor=compliance_officer)


@pytest.fixture
def payload(text, partners):
    """``payload(seq=…, **overrides)`` → a valid intake body naming both partners."""

    def make(seq: int = 1, **overrides):
        return intake_payload(text=text, partners=["PARTNER_A", "PARTNER_B"], seq=seq, **overrides)

    return make


@pytest.fixture
def origination_api(api, origination):
    return api(origination)
