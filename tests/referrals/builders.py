"""Applicants with consents for the compliance-screen tests, made the way production makes them:
a consent text through its service, the applicant and consent through the intake API."""

from __future__ import annotations

from rest_framework.test import APIClient

from partners.models import Partner
from referrals.models import Applicant, ConsentText
from referrals.services.consents import consent_text_create
from tests import factories
from tests.factories import PartnerFactory

TEXT_CODE = "referral-consent-admin-v1"
TEXT_BODY = (
    "个人信息单独同意书\n\n"
    "您同意本公司将您的身份信息、联系方式、所在地区、借款需求及收入信息提供给下列合作机构，用于贷款导流。\n"
    "    您可随时通过App“我的-隐私设置”或客服热线 95xxx 撤回同意；撤回不影响撤回前已进行的处理。"
)
NAMES = ["张三", "李四", "王五", "赵六", "欧阳娜娜"]


def national_id(seq: int) -> str:
    return factories.national_id(seq=seq)


def phone(seq: int) -> str:
    return f"139{(20250000 + seq * 7) % 10**8:08d}"


def partners() -> list[Partner]:
    return [
        PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司", contact_email="dpo@a.example"),
        PartnerFactory(code="PARTNER_B", name="乙银行股份有限公司", contact_email="dpo@b.example"),
    ]


def consent_text(*, actor, code: str = TEXT_CODE) -> ConsentText:
    existing = ConsentText.objects.filter(code=code).first()
    return existing or consent_text_create(actor=actor, code=code, body=TEXT_BODY, validity_days=90)


def intake_body(*, text: ConsentText, seq: int, partner_codes: list[str]) -> dict:
    """The factories' api.md-shaped body, with this module's names, phones and external ids."""
    return factories.intake_payload(
        text=text, partners=partner_codes, seq=seq, external_id=f"ADM-2026-{seq:06d}", name=NAMES[seq % len(NAMES)],
        phone=phone(seq),
    )  # fmt: skip


def applicant_with_consent(*, origination, text: ConsentText, seq: int = 1, partner_codes=None) -> Applicant:
    """One applicant and their consent, pushed through ``POST /api/v1/applicants/`` by ``origination``."""
    client = APIClient()
    client.force_authenticate(origination)
    body = intake_body(text=text, seq=seq, partner_codes=partner_codes or ["PARTNER_A", "PARTNER_B"])
    response = client.post("/api/v1/applicants/", body, format="json")
    assert response.status_code == 201, response.content
    return Applicant.objects.get(pk=response.json()["id"])
