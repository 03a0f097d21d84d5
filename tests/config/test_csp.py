"""Content-Security-Policy (django-csp) on every page: each response carries a policy whose scripts
come only from our own origin or carry the response's nonce (never 'unsafe-inline' nor
'unsafe-eval'); no page — template or HTML built in Python — has a script the policy would refuse;
and in Chromium the dashboard, a statement, the revenue chart, a run, the 2FA page and both API
docs work with no violation reported (tests/conftest.py's ``csp_violations`` guards every browser
test the same way)."""

from __future__ import annotations

import datetime
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from csp.middleware import CSPMiddleware
from django.conf import settings
from django.contrib import admin
from django.http import HttpResponse
from django.template import engines
from django.urls import reverse
from playwright.sync_api import expect

from config import dashboard
from referrals.models import Applicant, Reclaim, Referral
from referrals.services import dispatch as outbox
from referrals.services.ledger import ledger_checkpoint
from referrals.services.reclaims import reclaims_scan
from settlements.models import SettlementRun, Statement
from settlements.services.statements import statement_compute
from tests.factories import PartnerFactory, UserFactory, consent_text, make_contract
from tests.settlements.builders import PartnerSide, at, submitting
from tests.signin import TwoFactorClient, authenticator, sign_in

HEADER = "Content-Security-Policy"
PERIOD = "2026-11"
RECLAIM_TERMS = {"allowed": True, "min_ontime_installments": 3, "fee": "200.00", "non_solicit_days": 0}
DATA_BLOCKS = {"application/json", "application/ld+json"}  # not run: json_script's kind
# Redoc's footer logo: the one outside image the policy allows, on /api/redoc/ only (config/urls.py).
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><rect width="16" height="16"/></svg>'


# --- reading a policy and a page ------------------------------------------------------------------
def directives(header: str) -> dict[str, list[str]]:
    parsed = {}
    for part in header.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


class ScriptScan(HTMLParser):
    """What a page holds that a nonce-based policy refuses or must allow by nonce: inline scripts
    (with their nonce), event-handler attributes and ``javascript:`` URLs."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.inline_nonces: list[str | None] = []
        self.handlers: list[str] = []
        self.javascript_urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "script" and "src" not in attributes and (attributes.get("type") or "").lower() not in DATA_BLOCKS:
            self.inline_nonces.append(attributes.get("nonce"))
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}=…>")
            if name in {"href", "src", "action", "formaction"} and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.javascript_urls.append(f"<{tag} {name}={value!r}>")

    handle_startendtag = handle_starttag


def scan(html: str) -> ScriptScan:
    parser = ScriptScan()
    parser.feed(html)
    parser.close()
    return parser


def problems(response) -> list[str]:
    """Why this response would not hold under a strict nonce-based policy (empty when it would)."""
    header = response.headers.get(HEADER)
    if not header:
        return [f"no {HEADER} header"]
    found = []
    policy = directives(header)
    scripts = policy.get("script-src", policy.get("default-src", []))
    nonces = [source[len("'nonce-") : -1] for source in scripts if source.startswith("'nonce-")]
    if "'unsafe-eval'" in header:
        found.append("'unsafe-eval' in the policy")
    if "'unsafe-inline'" in scripts:
        found.append("'unsafe-inline' in script-src")
    if set(scripts) - {"'self'"} - {f"'nonce-{nonce}'" for nonce in nonces}:
        found.append(f"script-src allows more than our origin and the nonce: {scripts}")
    for name, wanted in (("object-src", ["'none'"]), ("base-uri", ["'self'"]), ("frame-ancestors", ["'none'"])):
        if policy.get(name) != wanted:
            found.append(f"{name} is {policy.get(name)}, not {wanted}")
    if response.get("Content-Type", "").startswith("text/html"):
        page = scan(response.content.decode())
        found += [
            f"inline <script> without the response's nonce (has {n!r})" for n in page.inline_nonces if n not in nonces
        ]
        found += [f"event handler {handler}" for handler in page.handlers]
        found += [f"javascript: URL {url}" for url in page.javascript_urls]
    return found


# --- the data every screen has something of -------------------------------------------------------
def lend(side: PartnerSide, referral: Referral, loan_id: str, ontime: int) -> None:
    """Accepted in early November, disbursed, ``ontime`` instalments paid before they were due."""
    side.accepted(referral, at(2, 9))
    side.approved(referral, at(3, 10), loan_id)
    side.disbursed(referral, at(4, 10), loan_id, "12000.00")
    for number in range(1, ontime + 1):
        due = datetime.date(2026, 11, 10 + number)
        side.repaid(referral, at(9 + number, 15), loan_id, number, "90.00", due=due, paid=due - datetime.timedelta(1))


@pytest.fixture
def world(monkeypatch, api, origination, compliance_officer, partnership_manager, finance_user):
    """A partner under contract; three referrals: one lent and worth reclaiming, one lent that is a
    near miss, one still waiting for the partner; November's statement and run; a sealed ledger."""
    monkeypatch.setattr(outbox, "_enqueue", lambda ids: None)  # no broker here
    partner = PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司")
    make_contract(partner, drafter=partnership_manager, approver=compliance_officer, reclaim=RECLAIM_TERMS)
    text = consent_text(actor=compliance_officer)
    reclaimable, near_miss, waiting = submitting(api(origination), text, partner, 3)
    side = PartnerSide(TwoFactorClient(), partner)
    lend(side, reclaimable, "LN-0001", ontime=3)
    lend(side, near_miss, "LN-0002", ontime=2)
    assert (reclaims_scan().candidates, Reclaim.objects.count()) == (1, 1)
    statement, computed = statement_compute(partner=partner, period=PERIOD, user=finance_user)
    assert computed
    assert statement.line_count > 0
    run = SettlementRun.objects.create(period=PERIOD, started_by=finance_user, progress=1, status="done")
    assert ledger_checkpoint() is not None
    dashboard.clear()
    return {"partner": partner, "statement": statement, "run": run, "waiting": waiting}


@pytest.fixture
def root(db):
    return UserFactory(username="root", is_superuser=True)


def url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def admin_pages(world) -> dict[str, str]:
    """Every registered model's list and the change page of its first row, then the custom screens
    (confirmations, reveal, export, withdraw, revenue, adds) — as the superuser sees them."""
    pages = {"admin index (dashboard)": url("index")}
    for model in admin.site._registry:
        opts = model._meta
        pages[f"{opts.label} list"] = url(f"{opts.app_label}_{opts.model_name}_changelist")
        first = model._default_manager.order_by("pk").first()
        if first is not None:
            pages[f"{opts.label} change"] = url(f"{opts.app_label}_{opts.model_name}_change", first.pk)
    applicant = Applicant.objects.order_by("pk").first()
    consent = applicant.consents.get()
    contract = world["partner"].contracts.get()
    pages |= {
        "partner pause": url("partners_partner_operate", world["partner"].pk, "pause"),
        "partner add": url("partners_partner_add"),
        "contract terminate": url("partners_contract_transition", contract.pk, "terminate"),
        "contract add": url("partners_contract_add"),
        "applicant reveal": url("referrals_applicant_reveal", applicant.pk),
        "applicant export": url("referrals_applicant_export", applicant.pk),
        "consent withdraw": url("referrals_consent_withdraw", consent.pk),
        "consent text add": url("referrals_consenttext_add"),
        "referral cancel": url("referrals_referral_operate", world["waiting"].pk, "cancel"),
        "reclaims, every status": url("referrals_reclaim_changelist") + "?status=all",
        "revenue": url("settlements_statement_revenue"),
        "run add": url("settlements_settlementrun_add"),
    }
    return pages


# --- every response carries the policy, and every page holds under it ---------------------------------
def test_every_admin_page_sends_the_policy_and_has_no_script_it_refuses(world, root):
    client = TwoFactorClient()
    client.force_login(root)
    pages = admin_pages(world)
    # One change page per app at least (and the models the compliance and finance screens show).
    for label in ("partners.Partner", "partners.Contract", "referrals.Applicant", "referrals.Consent",
                  "referrals.ConsentText", "referrals.ConsentEvent", "referrals.LedgerCheckpoint",
                  "referrals.Referral", "referrals.Dispatch", "referrals.CallbackEvent", "referrals.Loan",
                  "referrals.Reclaim", "referrals.ReclaimNearMiss", "settlements.Statement",
                  "settlements.SettlementRun"):  # fmt: skip
        assert f"{label} change" in pages, label
    found = {}
    for name, target in pages.items():
        response = client.get(target)
        assert response.status_code == 200, (name, target, response.status_code)
        if trouble := problems(response):
            found[name] = trouble
    assert found == {}


def test_the_reclaim_bulk_decision_and_the_statement_reconciliation_pages_hold(world, root):
    """Pages only a POST shows: the bulk decision asking for its reason, a refused reconciliation."""
    client = TwoFactorClient()
    client.force_login(root)
    reclaim = Reclaim.objects.get()
    bulk = client.post(
        url("referrals_reclaim_changelist"), {"action": "reject_selected", "_selected_action": [str(reclaim.pk)]}
    )
    assert bulk.status_code == 200
    assert problems(bulk) == []
    statement = world["statement"]
    client.post(url("settlements_statement_act", statement.pk, "submit"))
    response = client.post(url("settlements_statement_reconcile", statement.pk), follow=True)
    assert response.status_code == 200
    assert Statement.objects.get(pk=statement.pk).status == Statement.Status.UNDER_REVIEW
    assert problems(response) == []


def test_sign_in_lockout_and_two_factor_pages_hold(db, client, settings):
    """The login form, the lockout page, and /admin/2fa/: enrolment (with its QR code), the
    second-factor check of a password-only session, the status and a fresh set of backup codes."""
    assert problems(client.get("/admin/login/")) == []

    newcomer = UserFactory(username="newcomer")
    client.force_login(newcomer, verified=False)
    enrol = client.get("/admin/2fa/")
    assert "<svg" in enrol.content.decode()  # the QR code, built in Python
    assert problems(enrol) == []

    enrolled = UserFactory(username="enrolled")
    authenticator(enrolled)
    client.force_login(enrolled, verified=False)
    verify = client.get("/admin/2fa/")
    assert verify.status_code == 200
    assert problems(verify) == []

    client.force_login(enrolled)
    assert problems(client.get("/admin/2fa/")) == []
    codes = client.post("/admin/2fa/backup-codes/")
    assert codes.status_code == 200
    assert problems(codes) == []

    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT + 1):
        locked = client.post("/admin/login/", {"username": "enrolled", "password": "wrong", "otp_token": "000000"})
    assert locked.status_code == 429, [t.name for t in locked.templates]
    assert settings.AXES_LOCKOUT_TEMPLATE in [template.name for template in locked.templates]
    assert problems(locked) == []


def test_the_refusal_and_health_pages_hold(db, client, partnership_manager):
    client.force_login(partnership_manager)
    refused = client.get(url("settlements_statement_changelist"))
    assert refused.status_code == 403
    assert problems(refused) == []
    health = client.get("/health/", headers={"Accept": "text/html"})
    assert health["Content-Type"].startswith("text/html")
    assert problems(health) == []


def test_the_api_docs_send_the_policy_and_start_swagger_from_a_script_file(db, client, finance_user):
    client.force_login(finance_user)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert problems(docs) == []
    assert '<script src="/api/docs/?script="></script>' in docs.content.decode()
    start = client.get("/api/docs/?script=")
    assert start.status_code == 200
    assert start["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in start.content.decode()
    assert problems(start) == []
    # No validator badge: it would be an image from validator.swagger.io (img-src refuses it).
    assert re.search(r'"validatorUrl":\s*null', start.content.decode())

    redoc = client.get("/api/redoc/")
    assert redoc.status_code == 200
    assert problems(redoc) == []
    assert "fonts.googleapis.com" not in redoc.content.decode()  # templates/drf_spectacular/redoc.html
    images = directives(redoc[HEADER])["img-src"]
    assert images == ["'self'", "data:", REDOCLY_LOGO]
    assert REDOCLY_LOGO not in docs[HEADER]  # the logo is allowed on Redoc's page only


@pytest.mark.parametrize("variable", ["request.csp_nonce", "CSP_NONCE"])
def test_a_page_that_uses_the_nonce_gets_it_in_its_header(rf, variable):
    """Should a page ever need an inline script: ``nonce="{{ request.csp_nonce }}"`` (or the
    context processor's ``{{ CSP_NONCE }}``) — django-csp adds the nonce to the header only when
    the response read it."""
    template = engines["django"].from_string(f'<script nonce="{{{{ {variable} }}}}">go()</script>')
    middleware = CSPMiddleware(lambda request: HttpResponse(template.render(request=request)))
    used = middleware(rf.get("/"))
    nonce = re.search(r'nonce="([^"]+)"', used.content.decode()).group(1)
    assert f"'nonce-{nonce}'" in directives(used[HEADER])["script-src"]
    assert problems(used) == []

    unused = CSPMiddleware(lambda request: HttpResponse("<p>no script</p>"))(rf.get("/"))
    assert directives(unused[HEADER])["script-src"] == ["'self'"]
    # The same script under a header without its nonce: refused.
    assert problems(HttpResponse(used.content, headers={HEADER: unused[HEADER]})) == [
        f"inline <script> without the response's nonce (has {nonce!r})"
    ]


# --- no template has a script the policy refuses ------------------------------------------------------
TEMPLATES = sorted((Path(settings.BASE_DIR) / "templates").rglob("*.html"))


def test_there_are_templates_to_scan():
    assert len(TEMPLATES) > 20


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: str(path.relative_to(settings.BASE_DIR)))
def test_no_template_has_an_inline_script_without_the_nonce_nor_an_event_handler(template):
    page = scan(template.read_text(encoding="utf-8"))
    assert [nonce for nonce in page.inline_nonces if "csp_nonce" not in (nonce or "")] == []
    assert page.handlers == []
    assert page.javascript_urls == []


def test_the_scan_sees_what_it_must_refuse():
    page = scan(
        '<script>alert(1)</script><script nonce="{{ request.csp_nonce }}">ok()</script>'
        '<script src="/static/x.js"></script><script type="application/json">{}</script>'
        '<button onclick="go()">x</button><a href="javascript:go()">y</a>'
    )
    assert page.inline_nonces == [None, "{{ request.csp_nonce }}"]
    assert page.handlers == ["<button onclick=…>"]
    assert page.javascript_urls == ["<a href='javascript:go()'>"]


# --- in a browser: no violation reported, no script error ---------------------------------------------
def watch(page) -> list[str]:
    """Script errors and Content-Security-Policy reports on the page's console."""
    seen: list[str] = []
    page.on("pageerror", lambda error: seen.append(f"pageerror: {error}"))
    page.on("console", lambda message: seen.append(message.text) if "Content Security Policy" in message.text else None)
    return seen


@pytest.mark.django_db(transaction=True)
def test_the_back_office_pages_run_their_scripts_under_the_policy(live_server, page, world, auditor):
    seen = watch(page)
    base = live_server.url
    page.set_viewport_size({"width": 1440, "height": 1000})
    sign_in(page, base, auditor)

    charts = page.locator("canvas[data-chart]")  # the dashboard: Chart.js and dashboard.js
    expect(charts).to_have_count(5)
    for index in range(5):
        expect(charts.nth(index)).to_have_attribute("data-ready", "true")

    statement = world["statement"]
    page.goto(f"{base}/admin/settlements/statement/{statement.pk}/change/")
    expect(page.get_by_test_id("statement-status")).to_have_attribute("data-status", "draft")
    expect(page.locator("#nav-sidebar")).to_be_visible()  # the admin's own scripts ran (nav_sidebar.js)

    page.goto(f"{base}/admin/settlements/statement/revenue/")
    expect(page.locator("canvas").first).to_be_visible()
    page.wait_for_function("() => window.Chart && Object.keys(window.Chart.instances).length > 0")

    page.goto(f"{base}/admin/settlements/settlementrun/{world['run'].pk}/change/")
    expect(page.get_by_test_id("run-status")).to_have_attribute("data-status", "done")

    page.goto(f"{base}/admin/2fa/")
    expect(page.locator("#content")).to_be_visible()
    assert seen == []


@pytest.mark.django_db(transaction=True)
def test_the_api_docs_render_under_the_policy(live_server, page, finance_user):
    seen = watch(page)
    # Redocly's logo is the one outside image allowed there; served here (no network) to show it loads.
    page.route(REDOCLY_LOGO, lambda route: route.fulfill(content_type="image/svg+xml", body=SVG))
    base = live_server.url
    sign_in(page, base, finance_user)

    page.goto(f"{base}/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Spillway API")
    expect(page.locator(".opblock").first).to_be_visible()

    page.goto(f"{base}/api/redoc/")
    # Redoc parses the whole schema before it draws anything: seconds on a busy machine.
    expect(page.locator("h1").first).to_contain_text("Spillway API", timeout=30_000)
    expect(page.locator('[role="menu"] li').first).to_be_visible()
    expect(page.get_by_alt_text("redocly logo")).to_be_visible()  # not refused by img-src
    assert seen == []


def test_the_guard_in_conftest_catches_a_refused_script(page, csp_violations, client, db):
    """tests/conftest.py's ``csp_violations``: an inline script under our policy is reported on the
    console and recorded (emptied here, or this test would fail at teardown as it should)."""
    policy = client.get("/admin/login/")[HEADER]
    body = "<!doctype html><title>probe</title><script>document.title = 'ran'</script>"
    page.route("http://spillway.test/probe", lambda route: route.fulfill(body=body, headers={HEADER: policy}))
    # (The guard listens on the context too, and before this waiter: it has the report first.)
    with page.context.expect_console_message(lambda message: "Content Security Policy" in message.text):
        page.goto("http://spillway.test/probe")
    expect(page).to_have_title("probe")  # the script did not run
    assert len(csp_violations) == 1
    assert "inline script" in csp_violations[0]
    csp_violations.clear()
