"""factory_boy factories with realistic Chinese data."""

from __future__ import annotations

import datetime
import importlib

import factory
from django.apps import apps as django_apps
from django.contrib.auth.models import Group, User
from stdnum.cn import uscc

from config.roles import ROLES, grant, revoke
from partners import services
from partners.models import Contract, Partner

ROLE_MIGRATIONS = (
    "partners.migrations.0002_roles",
    "referrals.migrations.0002_ledger_triggers_and_roles",
    "referrals.migrations.0005_operations_roles",
    "settlements.migrations.0002_finance_roles",
    "referrals.migrations.0007_reclaim_roles",
    "referrals.migrations.0010_operations_least_privilege",  # WITHDRAWN: grants taken back
)


def ensure_roles() -> None:
    """The roles come from data migrations; a transactional test's flush empties them, so put them
    back (with the migrations' own code) when they are missing."""
    if (
        Group.objects.filter(name__in=ROLES).count() == len(ROLES)
        and Group.objects.filter(permissions__isnull=False).exists()
    ):
        return
    for name in ROLE_MIGRATIONS:  # in migration order: a later one may withdraw an earlier grant
        module = importlib.import_module(name)
        if hasattr(module, "PERMISSIONS"):
            grant(django_apps, module.PERMISSIONS)
        if hasattr(module, "WITHDRAWN"):
            revoke(django_apps, module.WITHDRAWN)


PROVINCES = ["110000", "310000", "440000", "330000", "320000", "510000"]


def credit_code(seq: int) -> str:
    """A valid unified social credit code (GB 32100-2015) that differs per ``seq``."""
    body = f"913100{seq:011d}"
    return body + uscc.calc_check_digit(body)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@lender.example")
    is_staff = True
    password = factory.django.Password("correct-horse-battery")

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        if extracted:
            ensure_roles()
        for role in extracted or []:
            self.groups.add(Group.objects.get(name=role))


class PartnerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Partner
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"PARTNER_{n:03d}")
    name = factory.Iterator(["甲消费金融有限公司", "乙银行股份有限公司", "丙小额贷款有限公司", "丁消费金融有限公司"])
    license_type = Partner.LicenseType.CONSUMER_FINANCE
    credit_code = factory.Sequence(credit_code)
    contact_email = factory.LazyAttribute(lambda p: f"dpo@{p.code.lower().replace('_', '-')}.example")
    contact_phone = "021-12345678"
    status = Partner.Status.ACTIVE
    api_base_url = factory.LazyAttribute(lambda p: f"http://127.0.0.1:9100/{p.code.lower()}")
    api_secret = factory.LazyAttribute(lambda p: f"secret-{p.code.lower()}")
    phone_hash = Partner.PhoneHash.HMAC_SHA256
    pia_reference = factory.Sequence(lambda n: f"PIA-2026-{n:03d}")
    pia_completed_on = datetime.date(2026, 10, 20)


def contract_terms(**overrides) -> dict:
    """The terms of api.md's example contract, with overrides."""
    terms = {
        "effective_from": datetime.date(2026, 11, 1),
        "effective_to": None,
        "priority": 10,
        "eligibility": {
            "min_amount": "1000.00", "max_amount": "200000.00", "terms_months": [3, 6, 12, 24],
            "provinces": [], "min_age": 22, "max_age": 55, "credit_grades": ["B", "C", "D"],
            "decline_reasons": [],
        },
        "data_fields": ["name", "national_id", "phone", "province", "requested_amount", "requested_term_months"],
        "daily_cap": 5000,
        "monthly_cap": None,
        "dedupe_days": 30,
        "fees": {
            "application_fee": "30.00", "application_fee_tiers": [{"from_count": 1001, "fee": "25.00"}],
            "approval_fee": "0.00", "disbursement_rate": "0.0100", "interest_share_rate": "0.2500",
            "vat_rate": "0.0600",
        },
        "clawback": {"fpd_days": 30, "duplicate_return_hours": 48},
        "reclaim": {"allowed": True, "min_ontime_installments": 6, "fee": "200.00", "non_solicit_days": 90},
    }  # fmt: skip
    terms.update(overrides)
    return terms


def make_contract(partner: Partner, *, drafter: User, approver: User | None = None, **overrides) -> Contract:
    """A contract version through the real services: drafted, and approved when ``approver`` is given."""
    contract = services.contract_create(actor=drafter, partner=partner, data=contract_terms(**overrides))
    if approver is not None:
        contract = services.contract_submit(actor=drafter, contract=contract)
        contract = services.contract_approve(actor=approver, contract=contract)
    return contract


# --- applicants and consents -------------------------------------------------------------------
CONSENT_BODY = (
    "个人信息单独同意书：您同意本公司将您的身份信息、联系方式、所在地区、借款需求及收入信息提供给下列合作机构，"
    "用于贷款导流；您可随时通过App“我的-隐私设置”或客服热线撤回同意，撤回不影响撤回前已进行的处理。"
)


def national_id(*, region: str = "110105", birth: datetime.date = datetime.date(1990, 5, 17), seq: int = 1) -> str:
    """A valid 18-character resident ID number (GB 11643-1999 check character)."""
    from stdnum.cn import ric

    body = f"{region}{birth:%Y%m%d}{seq % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")


def phone(seq: int = 0) -> str:
    return f"1{3 + seq % 7}{(12345678 + seq * 7919) % 10**9:09d}"


def consent_text(*, actor, code: str = "referral-consent-v3", validity_days: int = 90):
    from referrals.models import ConsentText
    from referrals.services.consents import consent_text_create

    existing = ConsentText.objects.filter(code=code).first()
    return existing or consent_text_create(actor=actor, code=code, body=CONSENT_BODY, validity_days=validity_days)


def intake_payload(*, text, partners: list[str], seq: int = 1, consent: dict | None = None, **overrides) -> dict:
    """An api.md-shaped intake body with valid, distinct personal data for ``seq``."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    body = {
        "external_id": f"APP-2026-{seq:06d}",
        "name": ["张三", "李四", "王五", "赵六", "欧阳娜娜"][seq % 5],
        "national_id": national_id(seq=seq),
        "phone": phone(seq),
        "province": "310000",
        "city": "310100",
        "requested_amount": "50000.00",
        "requested_term_months": 12,
        "expected_apr": "0.0450",
        "monthly_income": "12000.00",
        "credit_grade": "B",
        "decline_reasons": ["FUNDING_COST"],
        "declined_at": (now - datetime.timedelta(minutes=5)).isoformat(),
        "consent": {
            "text_code": text.code,
            "text_sha256": text.sha256,
            "partners": partners,
            "data_categories": ["identity", "contact", "location", "loan_request", "income"],
            "purposes": ["loan_referral", "reclaim_offer"],
            "channel": "app",
            "granted_at": (now - datetime.timedelta(minutes=6)).isoformat(),
            "ip": "203.0.113.7",
            "device_id": "ios-6F1C",
            "evidence_sha256": "ab" * 32,
            "expires_at": None,
            **(consent or {}),
        },
    }
    body.update(overrides)
    return body
