"""The demo origination system really goes through the intake API."""

from __future__ import annotations

import io

from django.core.management import call_command
from rest_framework.authtoken.models import Token

from referrals.models import Applicant, ConsentEvent, Referral
from tests.factories import PartnerFactory, UserFactory, make_contract


def test_demo_traffic_posts_valid_applicants_through_the_api(live_server, partnership_manager, compliance_officer):
    origination = UserFactory(username="origination", roles=["origination"], is_staff=False)
    Token.objects.create(user=origination)
    for code in ("DEMO_A", "DEMO_B"):
        make_contract(
            PartnerFactory(code=code), drafter=partnership_manager, approver=compliance_officer, eligibility={}
        )
    out = io.StringIO()
    call_command(
        "demo_traffic",
        "--api",
        live_server.url,
        "--count",
        "3",
        "--every",
        "0",
        "--seed",
        "7",
        "--withdraw-rate",
        "0",
        stdout=out,
    )
    assert out.getvalue().count("HTTP 201") == 3
    assert Applicant.objects.count() == 3
    assert ConsentEvent.objects.filter(type="granted").count() == 3
    assert Referral.objects.exists()
