"""``manage.py seed_demo``: demo users for every role and four partners with approved contracts.

Idempotent: what exists is left exactly as it is (no re-saved rows, no new history entries), so
``make run`` can call it on every start. Everything goes through the services, so the demo data
obeys the same rules as real data — the contracts are drafted by the partnership manager and
approved by a compliance officer (four-eyes).

Development only: it refuses to run with ``DEBUG`` off unless ``--force`` is given.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token
from stdnum.cn import uscc

from partners import services
from partners.models import Contract, Partner


@dataclass(frozen=True)
class DemoUser:
    """One demo login. ``password=None`` means a service account that uses an API token only."""

    username: str
    role: str | None
    password: str | None
    is_staff: bool = True
    is_superuser: bool = False

    @property
    def role_label(self) -> str:
        return self.role or "superuser"


# Fixed, printed, development-only passwords: the point is that anyone can log in to a demo.
DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("admin", None, "admin-demo-2026", is_superuser=True),
    DemoUser("compliance", "compliance_officer", "compliance-demo-2026"),
    DemoUser("compliance2", "compliance_officer", "compliance2-demo-2026"),
    DemoUser("partnerships", "partnership_manager", "partnerships-demo-2026"),
    DemoUser("operations", "operations", "operations-demo-2026"),
    DemoUser("finance", "finance", "finance-demo-2026"),
    DemoUser("finance2", "finance", "finance2-demo-2026"),
    DemoUser("auditor", "auditor", "auditor-demo-2026"),
    DemoUser("origination", "origination", None, is_staff=False),
)


def credit_code(body17: str) -> str:
    """A unified social credit code: 17 characters plus the GB 32100-2015 check character."""
    return body17 + uscc.calc_check_digit(body17)


def _eligibility(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "min_amount": "1000.00",
        "max_amount": "200000.00",
        "terms_months": [3, 6, 12, 24],
        "provinces": [],
        "min_age": 22,
        "max_age": 55,
        "credit_grades": ["B", "C", "D"],
        "decline_reasons": [],
    }
    base.update(values)
    return base


@dataclass(frozen=True)
class DemoPartner:
    """A fictional partner lender and the terms of its contract versions."""

    code: str
    name: str
    license_type: str
    credit_code_body: str
    contact_email: str
    contact_phone: str
    pia_reference: str
    pia_completed_on: datetime.date
    phone_hash: str
    contract: dict[str, Any]
    pending_version: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def partner_data(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "license_type": self.license_type,
            "credit_code": credit_code(self.credit_code_body),
            "contact_email": self.contact_email,
            "contact_phone": self.contact_phone,
            "status": Partner.Status.ACTIVE,
            "api_base_url": f"{settings.SPILLWAY_SIMULATOR_URL.rstrip('/')}/{self.code.lower()}",
            "api_secret": f"demo-secret-{self.code.lower()}",
            "phone_hash": self.phone_hash,
            "pia_reference": self.pia_reference,
            "pia_completed_on": self.pia_completed_on,
            **self.extra,
        }


# Fictional companies (any likeness to a real lender is accidental); credit codes are made up but
# carry a valid check character, with the registration region of each company's city.
DEMO_PARTNERS: tuple[DemoPartner, ...] = (
    DemoPartner(
        code="JINQIAO_BANK",
        name="金桥商业银行股份有限公司",
        license_type=Partner.LicenseType.BANK,
        credit_code_body="91320500MA1WJQ0B8",
        contact_email="dpo@jinqiao-bank.example",
        contact_phone="0512-6758 2100",
        pia_reference="PIA-2026-031",
        pia_completed_on=datetime.date(2026, 9, 18),
        phone_hash=Partner.PhoneHash.HMAC_SHA256,
        contract={
            "effective_from": datetime.date(2026, 10, 1),
            "priority": 40,
            # A regional bank: lends only in Shanghai and Jiangsu, to prime applicants.
            "eligibility": _eligibility(
                min_amount="5000.00",
                max_amount="300000.00",
                terms_months=[12, 24, 36],
                provinces=["310000", "320000"],
                min_age=25,
                max_age=55,
                credit_grades=["A", "B"],
                decline_reasons=["APR_TOO_LOW", "AMOUNT_OUT_OF_RANGE"],
            ),
            "data_fields": [
                "name",
                "national_id",
                "phone",
                "province",
                "city",
                "requested_amount",
                "requested_term_months",
                "monthly_income",
            ],
            "daily_cap": 800,
            "monthly_cap": 20000,
            "dedupe_days": 60,
            "fees": {
                "application_fee": "50.00",
                "application_fee_tiers": [],
                "approval_fee": "20.00",
                "disbursement_rate": "0.0050",
                "interest_share_rate": "0.2000",
                "vat_rate": "0.0600",
            },
            "clawback": {"fpd_days": 30, "duplicate_return_hours": 72},
            "reclaim": {"allowed": False},
        },
    ),
    DemoPartner(
        code="YUNFAN_CF",
        name="云帆消费金融有限公司",
        license_type=Partner.LicenseType.CONSUMER_FINANCE,
        credit_code_body="91310115MA1K4YUN2",
        contact_email="dpo@yunfan-cf.example",
        contact_phone="021-6088 3600",
        pia_reference="PIA-2026-027",
        pia_completed_on=datetime.date(2026, 9, 5),
        phone_hash=Partner.PhoneHash.HMAC_SHA256,
        contract={
            "effective_from": datetime.date(2026, 10, 1),
            "priority": 30,
            "eligibility": _eligibility(),
            "data_fields": ["name", "national_id", "phone", "province", "requested_amount", "requested_term_months"],
            "daily_cap": 5000,
            "dedupe_days": 30,
            "fees": {
                "application_fee": "30.00",
                "application_fee_tiers": [{"from_count": 1001, "fee": "25.00"}],
                "approval_fee": "0.00",
                "disbursement_rate": "0.0100",
                "interest_share_rate": "0.2500",
                "vat_rate": "0.0600",
            },
            "clawback": {"fpd_days": 30, "duplicate_return_hours": 48},
            # Demo terms: the simulator's loans repay in compressed time, so a reclaim can be followed
            # end to end in minutes (three on-time instalments, no non-solicit period).
            "reclaim": {"allowed": True, "min_ontime_installments": 3, "fee": "200.00", "non_solicit_days": 0},
        },
    ),
    DemoPartner(
        code="HAINA_CF",
        name="海纳消费金融股份有限公司",
        license_type=Partner.LicenseType.CONSUMER_FINANCE,
        credit_code_body="91440300MA5HN8A41",
        contact_email="privacy@haina-cf.example",
        contact_phone="0755-8663 1200",
        pia_reference="PIA-2026-035",
        pia_completed_on=datetime.date(2026, 10, 12),
        phone_hash=Partner.PhoneHash.HMAC_SHA256,
        contract={
            "effective_from": datetime.date(2026, 11, 1),
            "priority": 20,
            "eligibility": _eligibility(min_amount="2000.00", max_amount="150000.00", terms_months=[6, 12, 24]),
            "data_fields": ["name", "national_id", "phone", "province", "requested_amount", "requested_term_months"],
            "daily_cap": 3000,
            "dedupe_days": 30,
            "fees": {
                "application_fee": "28.00",
                "application_fee_tiers": [],
                "approval_fee": "10.00",
                "disbursement_rate": "0.0080",
                "interest_share_rate": "0.2200",
                "vat_rate": "0.0600",
            },
            "clawback": {"fpd_days": 30, "duplicate_return_hours": 48},
            "reclaim": {"allowed": True, "min_ontime_installments": 6, "fee": "180.00", "non_solicit_days": 120},
        },
        # Version 2, waiting for compliance: higher fee and priority, asks for income too.
        pending_version={
            "effective_from": datetime.date(2027, 1, 1),
            "priority": 25,
            "eligibility": _eligibility(min_amount="2000.00", max_amount="180000.00", terms_months=[6, 12, 24, 36]),
            "data_fields": [
                "name",
                "national_id",
                "phone",
                "province",
                "requested_amount",
                "requested_term_months",
                "monthly_income",
            ],
            "daily_cap": 4000,
            "dedupe_days": 30,
            "fees": {
                "application_fee": "32.00",
                "application_fee_tiers": [{"from_count": 2001, "fee": "28.00"}],
                "approval_fee": "10.00",
                "disbursement_rate": "0.0080",
                "interest_share_rate": "0.2400",
                "vat_rate": "0.0600",
            },
            "clawback": {"fpd_days": 45, "duplicate_return_hours": 48},
            "reclaim": {"allowed": True, "min_ontime_installments": 9, "fee": "220.00", "non_solicit_days": 120},
        },
    ),
    DemoPartner(
        code="ANXIN_MICRO",
        name="重庆安信网络小额贷款有限公司",
        license_type=Partner.LicenseType.MICROLOAN,
        credit_code_body="91500000MA5U7AX11",
        contact_email="compliance@anxin-micro.example",
        contact_phone="023-6790 5500",
        pia_reference="PIA-2026-040",
        pia_completed_on=datetime.date(2026, 10, 20),
        # Legacy plain SHA-256 phone hashes: the admin flags this partner as weak.
        phone_hash=Partner.PhoneHash.SHA256,
        contract={
            "effective_from": datetime.date(2026, 11, 1),
            "priority": 10,
            "eligibility": _eligibility(
                min_amount="500.00",
                max_amount="50000.00",
                terms_months=[3, 6, 12],
                min_age=22,
                max_age=50,
                credit_grades=["C", "D", "E"],
            ),
            "data_fields": ["name", "national_id", "phone", "province", "requested_amount", "requested_term_months"],
            "daily_cap": 2000,
            "monthly_cap": 40000,
            "dedupe_days": 15,
            "fees": {
                "application_fee": "20.00",
                "application_fee_tiers": [{"from_count": 501, "fee": "18.00"}],
                "approval_fee": "0.00",
                "disbursement_rate": "0.0000",
                "interest_share_rate": "0.3000",
                "vat_rate": "0.0600",
            },
            "clawback": {"fpd_days": 15, "duplicate_return_hours": 24},
            "reclaim": {"allowed": True, "min_ontime_installments": 12, "fee": "150.00", "non_solicit_days": 180},
        },
    ),
)


# --- the logins table (also printed by ``manage.py devstack``) -------------------------------------
def login_rows() -> list[tuple[str, str, str]]:
    """(username, role, password) for every demo user that exists; the service account shows its token."""
    existing = set(
        User.objects.filter(username__in=[u.username for u in DEMO_USERS]).values_list("username", flat=True)
    )
    tokens = dict(Token.objects.filter(user__username__in=existing).values_list("user__username", "key"))
    rows = []
    for spec in DEMO_USERS:
        if spec.username not in existing:
            continue
        secret = spec.password or f"API token: {tokens.get(spec.username, '(none)')}"
        rows.append((spec.username, spec.role_label, secret))
    return rows


def format_logins_table(rows: list[tuple[str, str, str]] | None = None) -> str:
    """The demo logins as a plain-text table."""
    rows = login_rows() if rows is None else rows
    if not rows:
        return "No demo users yet: run `manage.py seed_demo`."
    header = ("username", "role", "password")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


# --- seeding -------------------------------------------------------------------------------------
@dataclass
class SeedReport:
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _ensure_user(spec: DemoUser, *, reset_password: bool, report: SeedReport) -> User:
    user, created = User.objects.get_or_create(
        username=spec.username,
        defaults={
            "email": f"{spec.username}@lender.example",
            "is_staff": spec.is_staff,
            "is_superuser": spec.is_superuser,
        },
    )
    changed = False
    if created:
        if spec.password:
            user.set_password(spec.password)
        else:
            user.set_unusable_password()  # a service account logs in with its token only
        changed = True
    elif reset_password and spec.password and not user.check_password(spec.password):
        user.set_password(spec.password)
        changed = True
    if changed:
        user.save()
    if spec.role and not user.groups.filter(name=spec.role).exists():
        try:
            user.groups.add(Group.objects.get(name=spec.role))
        except Group.DoesNotExist as exc:
            raise CommandError(f"Group {spec.role!r} is missing: run `manage.py migrate` first.") from exc
    if spec.password is None:
        Token.objects.get_or_create(user=user)
    (report.created if created else report.kept).append(f"user {spec.username}")
    return user


def _ensure_partner(spec: DemoPartner, *, drafter: User, approver: User, report: SeedReport) -> Partner:
    partner = Partner.objects.filter(code=spec.code).first()
    if partner is None:
        partner = services.partner_create(actor=drafter, data=spec.partner_data())
        report.created.append(f"partner {spec.code}")
    else:
        report.kept.append(f"partner {spec.code}")
    if not Contract.objects.filter(partner=partner).exists():
        contract = services.contract_create(actor=drafter, partner=partner, data=spec.contract)
        contract = services.contract_submit(actor=drafter, contract=contract)
        services.contract_approve(actor=approver, contract=contract)
        report.created.append(f"contract {spec.code} v{contract.version} (active)")
    if spec.pending_version and not Contract.objects.filter(partner=partner, version__gte=2).exists():
        draft = services.contract_create(actor=drafter, partner=partner, data=spec.pending_version)
        services.contract_submit(actor=drafter, contract=draft)
        report.created.append(f"contract {spec.code} v{draft.version} (pending approval)")
    return partner


@transaction.atomic
def seed_demo(*, reset_passwords: bool = False) -> SeedReport:
    """Create whatever of the demo data is missing; leave everything else untouched."""
    report = SeedReport()
    users = {spec.username: _ensure_user(spec, reset_password=reset_passwords, report=report) for spec in DEMO_USERS}
    for spec in DEMO_PARTNERS:
        _ensure_partner(spec, drafter=users["partnerships"], approver=users["compliance"], report=report)
    return report


class Command(BaseCommand):
    help = "Create demo users (one per role), four partners and their approved contracts. Idempotent; DEBUG only."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--force", action="store_true", help="Run even though DEBUG is off (never in production).")
        parser.add_argument(
            "--reset-passwords",
            action="store_true",
            help="Set the demo users' passwords back to the printed ones if they were changed.",
        )
        parser.add_argument(
            "--logins-only", action="store_true", help="Only print the demo logins table; create nothing."
        )

    def handle(self, *args, **options) -> None:
        write: Callable[[str], None] = self.stdout.write
        if options["logins_only"]:
            write(format_logins_table())
            return
        if not settings.DEBUG and not options["force"]:
            raise CommandError(
                "seed_demo creates users with published passwords: it only runs with DEBUG on (or --force)."
            )
        report = seed_demo(reset_passwords=options["reset_passwords"])
        if report.created:
            write(self.style.SUCCESS("Created: " + ", ".join(report.created)))
        else:
            write("Demo data already present; nothing changed.")
        write("")
        write(format_logins_table())
        write("")
        for partner in Partner.objects.filter(code__in=[p.code for p in DEMO_PARTNERS]).prefetch_related("contracts"):
            versions = ", ".join(f"v{c.version} {c.status}" for c in partner.contracts.all())
            weak = "  (weak phone hash)" if partner.weak_phone_hash else ""
            write(f"{partner.code:<14} {partner.name}  {partner.api_base_url}  [{versions}]{weak}")
