"""The admin landing page's dashboard: who sees which panel, that its figures are what the
database holds, that the page stays within a fixed number of queries and that a second view within
a minute is served from the cache."""

from __future__ import annotations

import datetime
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.utils import timezone

from config import dashboard
from partners.models import PartnerCircuit
from referrals.models import Consent, Dispatch, DispatchAttempt, Loan, Reclaim, Referral
from referrals.services.consents import consent_withdraw
from settlements import periods
from settlements.models import Statement
from tests.factories import PartnerFactory, UserFactory, consent_text, intake_payload, make_contract
from tests.signin import PASSWORD, authenticator, current_code

PANEL_IDS = {
    "dispatch_health": "panel-dispatch-health",
    "funnel": "panel-funnel",
    "referrals_per_day": "panel-referrals-per-day",
    "consents": "panel-consents",
    "reclaims": "panel-reclaims",
    "revenue": "panel-revenue",
}
# What each role sees, from the permissions the roles' migrations grant.
SEES = {
    "operations": {"dispatch_health", "funnel", "referrals_per_day", "reclaims"},
    "compliance_officer": {"dispatch_health", "funnel", "referrals_per_day", "consents", "reclaims"},
    "finance": {"funnel", "referrals_per_day", "revenue"},
    "partnership_manager": {"funnel", "referrals_per_day", "reclaims"},
    "auditor": set(PANEL_IDS),
}


# --- a tiny DOM (the standard library's parser; enough to find panels and cells) --------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]):
        self.tag, self.attrs, self.children = tag, attrs, []

    def __getitem__(self, name: str) -> str:
        return self.attrs[name]

    def get(self, name: str, default=None):
        return self.attrs.get(name, default)

    def get_text(self, strip: bool = False) -> str:
        text = "".join(child if isinstance(child, str) else child.get_text() for child in self.children)
        return text.strip() if strip else text

    def _matches(self, tag, conditions) -> bool:
        if tag is not None and self.tag != tag:
            return False
        for name, wanted in conditions.items():
            value = self.attrs.get(name)
            if wanted is True:
                ok = name in self.attrs
            elif callable(wanted):
                ok = wanted(value)
            else:
                ok = value == wanted
            if not ok:
                return False
        return True

    def find_all(self, tag=None, attrs=None, **conditions) -> list[Node]:
        conditions = {**(attrs or {}), **conditions}
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child._matches(tag, conditions):
                    found.append(child)
                found.extend(child.find_all(tag, conditions))
        return found

    def find(self, tag=None, attrs=None, **conditions) -> Node | None:
        found = self.find_all(tag, attrs, **conditions)
        return found[0] if found else None


class TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__()
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    builder.root.html = html
    return builder.root


@pytest.fixture(autouse=True)
def _fresh_cache():
    dashboard.clear()
    yield
    dashboard.clear()


def page(client, user) -> Node:
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 200
    return parse(response.content.decode())


def shown(soup: Node) -> set[str]:
    return {name for name, testid in PANEL_IDS.items() if soup.find(attrs={"data-testid": testid})}


def cell(panel, partner: str, field: str) -> str:
    return panel.find("tr", attrs={"data-partner": partner}).find(attrs={"data-field": field}).get_text(strip=True)


# --- data -------------------------------------------------------------------------------------
@pytest.fixture
def world(api, origination, compliance_officer, partnership_manager):
    """Two partners; five applicants referred to A (three also to B); referrals moved along the
    funnel; loans; one consent withdrawn; dispatch attempts; an open circuit; reclaims; statements."""
    a = PartnerFactory(code="PARTNER_A", name="甲消费金融有限公司")
    b = PartnerFactory(code="PARTNER_B", name="乙银行股份有限公司")
    for partner in (a, b):
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    text = consent_text(actor=compliance_officer)
    client = api(origination)
    for seq in range(1, 6):
        codes = [a.code, b.code] if seq <= 3 else [a.code]
        response = client.post("/api/v1/applicants/", intake_payload(text=text, partners=codes, seq=seq), format="json")
        assert response.status_code == 201, response.content
    now = timezone.now()
    a_refs = list(Referral.objects.filter(partner=a).order_by("applicant__created_at", "pk"))
    b_refs = list(Referral.objects.filter(partner=b).order_by("applicant__created_at", "pk"))
    assert len(a_refs) == 5
    assert len(b_refs) == 3

    def move(referral, status, *, submitted=False):
        Referral.objects.filter(pk=referral.pk).update(
            status=status, probe_answered_at=now, submitted_at=now if submitted else None
        )

    # A: 1 declined, 4 accepted, 3 submitted; 2 approved loans, 1 of them disbursed.
    move(a_refs[0], Referral.Status.PROBE_DECLINED)
    move(a_refs[1], Referral.Status.PROBE_ACCEPTED)
    move(a_refs[2], Referral.Status.SUBMITTED, submitted=True)
    move(a_refs[3], Referral.Status.SUBMITTED, submitted=True)
    move(a_refs[4], Referral.Status.SUBMITTED, submitted=True)
    loan1 = Loan.objects.create(referral=a_refs[2], partner=a, loan_id="L-1", approved_at=now, disbursed_at=now)
    loan2 = Loan.objects.create(referral=a_refs[3], partner=a, loan_id="L-2", approved_at=now)
    loan3 = Loan.objects.create(referral=a_refs[4], partner=a, loan_id="L-3")  # neither yet
    # B: 1 accepted and submitted, approved and disbursed; 2 still queued.
    move(b_refs[0], Referral.Status.SUBMITTED, submitted=True)
    loan4 = Loan.objects.create(referral=b_refs[0], partner=b, loan_id="L-4", approved_at=now, disbursed_at=now)

    # One consent withdrawn (the last applicant's, referred to A only).
    consent_withdraw(actor=compliance_officer, consent=a_refs[4].consent, channel="app", reason="不再需要")

    # Attempts on A's probes: six that reached A in the last hour, one 3 h ago, one a refusal,
    # one two days ago (outside every window).
    probe = Dispatch.objects.filter(partner=a, kind=Dispatch.Kind.PROBE).first()
    outcome = DispatchAttempt.Outcome
    for number, (minutes, duration, result) in enumerate(
        [
            (5, 100, outcome.SUCCESS), (10, 200, outcome.SUCCESS), (15, 300, outcome.SUCCESS),
            (20, 400, outcome.SUCCESS), (25, 500, outcome.SUCCESS), (30, 1000, outcome.PERMANENT),
            (180, 5000, outcome.TRANSIENT), (40, 0, outcome.REFUSED), (2 * 24 * 60, 9000, outcome.TRANSIENT),
        ],
        start=1,
    ):  # fmt: skip
        DispatchAttempt.objects.create(
            dispatch=probe, number=number, started_at=now - datetime.timedelta(minutes=minutes),
            duration_ms=duration, outcome=result,
        )  # fmt: skip
    PartnerCircuit.objects.create(
        partner=b, consecutive_failures=5, opened_at=now, open_until=now + datetime.timedelta(minutes=5)
    )

    # Reclaims: two candidates, one under review, one rejected (not in the queue).
    for loan, status in ((loan1, "candidate"), (loan2, "candidate"), (loan3, "under_review"), (loan4, "rejected")):
        Reclaim.objects.create(
            loan=loan, referral=loan.referral, partner=loan.partner, contract_id=loan.referral.contract_id,
            consent_id=loan.referral.consent_id, status=status,
        )  # fmt: skip

    # Statements: this month and the one before.
    this = periods.of(now)
    before = periods.shift(this, -1)
    for partner, period, gross in ((a, this, "1060.00"), (b, this, "530.00"), (a, before, "212.00")):
        Statement.objects.create(
            partner=partner, period=period, gross=Decimal(gross), computed_by=compliance_officer, computed_at=now
        )
    return {"a": a, "b": b, "this": this, "before": before}


# --- who sees what ----------------------------------------------------------------------------
@pytest.mark.parametrize("role", sorted(SEES))
def test_each_role_sees_its_panels_only(client, cast, role):
    assert shown(page(client, cast[role])) == SEES[role]


def test_compliance_does_not_see_revenue_and_finance_not_dispatch_health(client, compliance_officer, finance_user):
    assert "revenue" not in shown(page(client, compliance_officer))
    assert "dispatch_health" not in shown(page(client, finance_user))


def test_superuser_sees_everything(client, db):
    admin = UserFactory(username="root", is_superuser=True)
    assert shown(page(client, admin)) == set(PANEL_IDS)


def test_staff_without_permissions_sees_no_dashboard_but_the_page_works(client, db):
    soup = page(client, UserFactory(username="nobody"))
    assert shown(soup) == set()
    assert soup.find(attrs={"data-testid": "dashboard"}) is None
    assert soup.find(id="content-main") is not None


def test_the_app_list_stays_below_the_panels(client, operations_user):
    soup = page(client, operations_user)
    panels = soup.find(attrs={"data-testid": "dashboard"})
    app_list = soup.find(id="content-main")
    assert panels is not None
    assert app_list is not None
    assert soup.html.index('data-testid="dashboard"') < soup.html.index('id="content-main"')
    assert soup.find("script", src=lambda src: src and src.endswith("vendor/chart.umd.min.js"))
    assert soup.find("script", src=lambda src: src and src.endswith("dashboard/dashboard.js"))
    assert not [s for s in soup.find_all("script") if not s.get("src") and s.get("type") != "application/json"]


# --- the figures ------------------------------------------------------------------------------
def test_funnel_counts_each_stage_per_partner(client, auditor, world):
    panel = page(client, auditor).find(attrs={"data-testid": "panel-funnel"})
    a = {field: cell(panel, "PARTNER_A", field) for field in dashboard.FUNNEL_STAGES}
    b = {field: cell(panel, "PARTNER_B", field) for field in dashboard.FUNNEL_STAGES}
    assert a == {"referred": "5", "probe_accepted": "4", "submitted": "3", "approved": "2", "disbursed": "1"}
    assert b == {"referred": "3", "probe_accepted": "1", "submitted": "1", "approved": "1", "disbursed": "1"}


def test_referrals_per_day_counts_today(client, partnership_manager, world):
    panel = page(client, partnership_manager).find(attrs={"data-testid": "panel-referrals-per-day"})
    today = timezone.localdate().isoformat()
    assert panel.find(attrs={"data-field": "total"}).get_text(strip=True) == "8"
    assert panel.find("tr", attrs={"data-day": today}).find("td").get_text(strip=True) == "8"
    assert len(panel.find_all("tr", attrs={"data-day": True})) == dashboard.DAYS


def test_consents_granted_and_withdrawn(client, compliance_officer, world):
    panel = page(client, compliance_officer).find(attrs={"data-testid": "panel-consents"})
    assert panel.find(attrs={"data-field": "granted"}).get_text(strip=True) == "5"
    assert panel.find(attrs={"data-field": "withdrawn"}).get_text(strip=True) == "1"
    assert Consent.objects.filter(status=Consent.Status.WITHDRAWN).count() == 1


def test_dispatch_health_per_partner(client, operations_user, world):
    panel = page(client, operations_user).find(attrs={"data-testid": "panel-dispatch-health"})
    # Last hour, reached A: 100 200 300 400 500 1000 → p50 = 350, p95 = 500 + 0.75 × 500 = 875.
    assert cell(panel, "PARTNER_A", "p50") == "350"
    assert cell(panel, "PARTNER_A", "p95") == "875"
    # Last 24 h: 7 calls, 2 errors (the refusal never left, the 2-day-old one is outside).
    assert cell(panel, "PARTNER_A", "attempts") == "7"
    assert cell(panel, "PARTNER_A", "error_rate") == "28.6%"
    assert (
        panel.find("tr", attrs={"data-partner": "PARTNER_A"}).find(attrs={"data-field": "circuit"})["data-state"]
        == "closed"
    )
    assert (
        panel.find("tr", attrs={"data-partner": "PARTNER_B"}).find(attrs={"data-field": "circuit"})["data-state"]
        == "open"
    )
    assert cell(panel, "PARTNER_B", "p50") == "—"
    for code in ("PARTNER_A", "PARTNER_B"):
        pending = Dispatch.objects.filter(partner__code=code, status=Dispatch.Status.PENDING)
        assert cell(panel, code, "queued") == str(pending.count())
    assert int(cell(panel, "PARTNER_B", "queued")) > 0
    assert cell(panel, "PARTNER_B", "oldest_queued") != "—"


def test_percentiles_match_percentile_cont_definition(db, world):
    """The SQLite path interpolates like PostgreSQL's percentile_cont."""
    since = timezone.now() - dashboard.LATENCY_WINDOW
    figures = dashboard.latency_percentiles(since)[world["a"].pk]
    assert figures == {"p50": pytest.approx(350.0), "p95": pytest.approx(875.0)}


def test_reclaim_queue(client, compliance_officer, world):
    panel = page(client, compliance_officer).find(attrs={"data-testid": "panel-reclaims"})
    assert panel.find(attrs={"data-field": "candidate"}).get_text(strip=True) == "2"
    assert panel.find(attrs={"data-field": "under_review"}).get_text(strip=True) == "1"


def test_revenue_per_month(client, finance_user, world):
    panel = page(client, finance_user).find(attrs={"data-testid": "panel-revenue"})
    assert panel.find(attrs={"data-period": world["this"]}).get_text(strip=True) == "1590.00"
    assert panel.find(attrs={"data-period": world["before"]}).get_text(strip=True) == "212.00"
    assert panel.find(attrs={"data-field": "total"}).get_text(strip=True) == "1802.00"


def test_chart_data_comes_in_json_script_blocks(client, auditor, world):
    soup = page(client, auditor)
    for canvas in soup.find_all("canvas", attrs={"data-chart": True}):
        block = soup.find("script", id=canvas["data-chart"], type="application/json")
        assert block is not None, canvas["data-chart"]


# --- cost -------------------------------------------------------------------------------------
def test_index_page_queries_are_bounded_and_the_second_view_is_cached(
    client, auditor, world, django_assert_max_num_queries, django_assert_num_queries
):
    client.force_login(auditor)
    with django_assert_max_num_queries(20) as first:
        assert client.get("/admin/").status_code == 200
    with django_assert_max_num_queries(len(first.captured_queries) - 6) as second:
        assert client.get("/admin/").status_code == 200
    # The second view runs none of the panels' queries.
    tables = ("referrals_referral", "referrals_consentevent", "referrals_dispatchattempt", "referrals_reclaim",
              "settlements_statement", "partners_partnercircuit")  # fmt: skip
    assert not [q["sql"] for q in second.captured_queries if any(t in q["sql"] for t in tables)]


def test_query_count_does_not_grow_with_the_data(client, auditor, world, django_assert_max_num_queries):
    client.force_login(auditor)
    with django_assert_max_num_queries(20) as before:
        client.get("/admin/")
    dashboard.clear()
    PartnerFactory(code="PARTNER_C", name="丙小贷有限公司")
    with django_assert_max_num_queries(len(before.captured_queries)):
        client.get("/admin/")


# --- in a browser -----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_charts_draw_in_a_browser(live_server, page, auditor, world):
    from playwright.sync_api import expect

    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_viewport_size({"width": 1440, "height": 1000})
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", auditor.username)
    page.fill("#id_password", PASSWORD)
    page.fill("#id_otp_token", current_code(authenticator(auditor)))
    page.click('#login-form input[type="submit"]')
    expect(page.get_by_test_id("panel-revenue")).to_be_visible()
    canvases = page.locator("canvas[data-chart]")
    expect(canvases).to_have_count(5)
    for index in range(5):
        expect(canvases.nth(index)).to_have_attribute("data-ready", "true")
    assert errors == []
    expect(page.locator("#content-main .app-partners")).to_be_visible()
