"""Play the lender's origination system for the demo: push declined applicants through the REST
API (with their consent), and now and then withdraw one, so ``make run`` shows referrals live."""

from __future__ import annotations

import datetime
import hashlib
import random
import time

import requests
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token
from stdnum.cn import ric

from partners.models import Partner
from referrals.models import ConsentText
from referrals.services.consents import consent_text_create

TEXT_CODE = "referral-consent-demo-v1"
TEXT_BODY = (
    "个人信息单独同意书（演示）：为向您推荐可能批准您借款申请的合作机构，您同意我们将您的姓名、身份证号、手机号、"
    "所在地区、借款需求及收入信息提供给下列合作机构，仅用于贷款导流及回捞邀约。您可随时在App“我的-隐私设置”"
    "或致电客服撤回本同意，撤回不影响撤回前基于同意已进行的处理。"
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超"]
PROVINCES = [
    ("310000", "310100"),
    ("320000", "320100"),
    ("440000", "440300"),
    ("330000", "330100"),
    ("110000", "110100"),
]
REASONS = ["FUNDING_COST", "AMOUNT_OUT_OF_RANGE", "TERM_NOT_OFFERED", "REGION_NOT_SERVED", "SCORE_BELOW_CUTOFF"]


def national_id(rng: random.Random) -> str:
    birth = datetime.date(1970, 1, 1) + datetime.timedelta(days=rng.randint(0, 365 * 34))
    body = f"110105{birth:%Y%m%d}{rng.randint(0, 999):03d}"
    return body + ric.calc_check_digit(body + "0")


class Command(BaseCommand):
    help = "Send demo applicants through the intake API every few seconds (demo only)."

    def add_arguments(self, parser):
        parser.add_argument("--api", default="http://127.0.0.1:8000", help="Spillway's base URL.")
        parser.add_argument("--every", type=float, default=3.0, help="Seconds between applicants.")
        parser.add_argument("--count", type=int, default=0, help="Stop after this many (0: never).")
        parser.add_argument("--withdraw-rate", type=float, default=0.05)
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args, api: str, every: float, count: int, withdraw_rate: float, seed, **options):
        rng = random.Random(seed)  # noqa: S311  (demo data, not security)
        text = self._text()
        token = Token.objects.get(user__username="origination").key
        partners = list(Partner.objects.filter(status=Partner.Status.ACTIVE).values_list("code", flat=True))
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        sent = 0
        while not count or sent < count:
            body = self._applicant(rng, text, partners)
            try:
                response = session.post(f"{api}/api/v1/applicants/", json=body, timeout=10)
            except requests.RequestException as exc:
                self.stderr.write(f"intake API not reachable yet ({type(exc).__name__}); retrying")
                time.sleep(2)
                continue
            sent += 1
            data = response.json()
            routed = ", ".join(f"{r['partner']}" for r in data.get("referrals", [])) or "no partner"
            self.stdout.write(f"{body['external_id']}: HTTP {response.status_code}, referred to {routed}")
            if response.status_code == 201 and rng.random() < withdraw_rate:
                time.sleep(rng.uniform(0.5, 3))
                consent_id = data["consent"]["id"]
                withdrawn = session.post(
                    f"{api}/api/v1/consents/{consent_id}/withdraw/",
                    json={"channel": "app", "reason": "不再需要"},
                    timeout=60,
                )
                self.stdout.write(f"{body['external_id']}: consent withdrawn (HTTP {withdrawn.status_code})")
            time.sleep(every)

    def _text(self) -> ConsentText:
        text = ConsentText.objects.filter(code=TEXT_CODE).first()
        if text is None:
            author = get_user_model().objects.get(username="compliance")
            text = consent_text_create(actor=author, code=TEXT_CODE, body=TEXT_BODY, validity_days=90)
        return text

    def _applicant(self, rng: random.Random, text: ConsentText, partners: list[str]) -> dict:
        now = datetime.datetime.now(datetime.UTC)
        province, city = rng.choice(PROVINCES)
        named = rng.sample(partners, k=max(1, min(len(partners), rng.randint(2, 4))))
        external = f"DEMO-{now:%Y%m%d%H%M%S}-{rng.randint(0, 99999):05d}"
        return {
            "external_id": external,
            "name": rng.choice(SURNAMES) + rng.choice(GIVEN),
            "national_id": national_id(rng),
            "phone": f"1{rng.choice('356789')}{rng.randint(0, 999_999_999):09d}",
            "province": province,
            "city": city,
            "requested_amount": f"{rng.choice([5000, 10000, 20000, 50000, 80000, 150000])}.00",
            "requested_term_months": rng.choice([3, 6, 12, 24]),
            "expected_apr": "0.0450",
            "monthly_income": f"{rng.randint(4, 30) * 1000}.00",
            "credit_grade": rng.choice("ABCDE"),
            "decline_reasons": [rng.choice(REASONS)],
            "declined_at": (now - datetime.timedelta(seconds=30)).isoformat(),
            "consent": {
                "text_code": text.code,
                "text_sha256": text.sha256,
                "partners": named,
                "data_categories": ["identity", "contact", "location", "loan_request", "income"],
                "purposes": ["loan_referral", "reclaim_offer"],
                "channel": rng.choice(["app", "h5"]),
                "granted_at": (now - datetime.timedelta(seconds=40)).isoformat(),
                "ip": f"203.0.113.{rng.randint(1, 254)}",
                "device_id": f"ios-{rng.randint(0, 0xFFFF):04X}",
                "evidence_sha256": hashlib.sha256(external.encode()).hexdigest(),
                "expires_at": None,
            },
        }
