"""Every changelist stays fast at millions of rows: no ``COUNT(*)`` over a whole table, a bounded
number of queries whatever the number of rows, and on PostgreSQL an estimated total (perf-notes.md).
"""

from __future__ import annotations

import datetime
import re

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from config.admin_tools import EstimatedCountPaginator, LargeTableAdminMixin
from partners.models import Partner
from referrals.models import Applicant, CallbackEvent, Referral
from tests.factories import PartnerFactory, UserFactory, consent_text, intake_payload, make_contract

PROJECT_APPS = {"partners", "referrals", "settlements"}
QUERY_BUDGET = 12  # session and user, the queue summary or facets, the count, the page, its filters
COUNT = re.compile(r"\bCOUNT\(\*\)", re.IGNORECASE)


def project_admins():
    return sorted(
        (model._meta.label for model in admin.site._registry if model._meta.app_label in PROJECT_APPS),
    )


def all_admins():
    return sorted(model._meta.label for model in admin.site._registry)


def changelist_url(label: str) -> str:
    app_label, model_name = label.lower().split(".")
    return reverse(f"admin:{app_label}_{model_name}_changelist")


def unbounded_counts(queries) -> list[str]:
    """Any ``COUNT(*)`` that is not over a ``LIMIT`` subquery would scan the whole (filtered) table."""
    return [q["sql"] for q in queries if COUNT.search(q["sql"]) and " LIMIT " not in q["sql"].upper()]


@pytest.fixture
def superuser_client(client, db):
    client.force_login(UserFactory(is_superuser=True, is_staff=True))
    return client


@pytest.fixture
def some_rows(db, partnership_manager, compliance_officer):
    """A few partners and contract versions, so their columns' relations show up as N+1 if any."""
    for seq in range(3):
        partner = PartnerFactory()
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer, priority=10 + seq)


def test_every_project_admin_uses_the_estimated_count_paginator():
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label in PROJECT_APPS:
            assert isinstance(model_admin, LargeTableAdminMixin), model._meta.label
            assert issubclass(model_admin.paginator, EstimatedCountPaginator), model._meta.label
            assert model_admin.show_full_result_count is False, model._meta.label


@pytest.mark.parametrize("label", all_admins())
def test_every_changelist_is_bounded(superuser_client, some_rows, django_assert_max_num_queries, label):
    with django_assert_max_num_queries(QUERY_BUDGET), CaptureQueriesContext(connection) as captured:
        response = superuser_client.get(changelist_url(label))
    assert response.status_code == 200
    if label.split(".")[0] in PROJECT_APPS:  # third-party admins (auth, tokens, beat) count their small tables
        assert unbounded_counts(captured.captured_queries) == []


@pytest.mark.parametrize("label", project_admins())
def test_filtered_changelists_count_within_a_limit(superuser_client, some_rows, label):
    """A search or a filter still counts at most the cap (on PostgreSQL, then asks the planner)."""
    with CaptureQueriesContext(connection) as captured:
        response = superuser_client.get(changelist_url(label), {"q": "nothing-matches-this"})
    assert response.status_code == 200
    assert unbounded_counts(captured.captured_queries) == []


def test_the_page_says_when_the_count_stopped_at_the_cap(superuser_client, some_rows, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "cap", 2)
    response = superuser_client.get(changelist_url("partners.Partner"))
    assert response.context["cl"].paginator.capped or response.context["cl"].paginator.estimated
    assert re.search(r'<span class="result-count">(2\+|(about |约 )\d+)</span>', response.content.decode())


# --- 200,000 rows on PostgreSQL -----------------------------------------------------------------
ROWS = 200_000


@pytest.fixture
def callbacks(db, api, origination, partnership_manager, compliance_officer):
    """200,000 partner callbacks (one referral, raw ``generate_series``), analysed; the statistics
    are put back afterwards (ANALYZE writes them outside the test's transaction)."""
    partner = PartnerFactory(code="PARTNER_A")
    make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    text = consent_text(actor=compliance_officer)
    response = api(origination).post(
        "/api/v1/applicants/", intake_payload(text=text, partners=["PARTNER_A"]), format="json"
    )
    assert response.status_code == 201, response.content
    referral = Applicant.objects.get(pk=response.json()["id"]).referrals.get()
    table = CallbackEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {table} (partner_id, event_id, type, referral_id, occurred_at, data, body_sha256,
                                     status, note, received_at)
                SELECT %s, 'evt-' || g, CASE WHEN g %% 10 = 0 THEN 'loan.disbursed' ELSE 'application.accepted' END,
                       %s, now() - g * interval '1 second', '{{}}'::jsonb, repeat('0', 64), 'processed', '',
                       now() - g * interval '1 second'
                FROM generate_series(1, %s) AS g""",  # noqa: S608 (the model's table name)
            [partner.pk, referral.pk, ROWS],
        )
        cursor.execute(f"ANALYZE {table}")
    yield referral
    with connection.cursor() as cursor:
        # The foreign-key checks of the 200,000 rows, inserted and deleted, run now — not deferred to
        # the test's end, when the ANALYZE below has told the planner the table is empty and it may
        # check each key with a full scan of an index that merely contains ``id``.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"DELETE FROM {table}")  # noqa: S608 (the model's table name)
        cursor.execute(f"ANALYZE {table}")


@pytest.mark.postgres
def test_a_changelist_at_200000_rows_never_counts_the_table(superuser_client, callbacks, django_assert_max_num_queries):
    url = changelist_url("referrals.CallbackEvent")
    for params in ({}, {"p": "2000"}):  # the first page and a deep one (OFFSET 99,950)
        with django_assert_max_num_queries(QUERY_BUDGET), CaptureQueriesContext(connection) as captured:
            response = superuser_client.get(url, params)
        assert response.status_code == 200
        assert unbounded_counts(captured.captured_queries) == []
        paginator = response.context["cl"].paginator
        assert paginator.estimated
        assert ROWS * 0.9 <= paginator.count <= ROWS * 1.1  # the planner's reltuples
        assert len(response.context["cl"].result_list) == 50
        assert re.search(r'<span class="result-count">(about |约 )\d+</span>', response.content.decode())

    # A filter that matches a tenth of the table: counted up to the cap, then the planner's estimate.
    with django_assert_max_num_queries(QUERY_BUDGET), CaptureQueriesContext(connection) as captured:
        response = superuser_client.get(url, {"type": "loan.disbursed"})
    assert unbounded_counts(captured.captured_queries) == []
    assert any(q["sql"].startswith("EXPLAIN") for q in captured.captured_queries)
    assert response.context["cl"].paginator.estimated
    assert ROWS * 0.05 <= response.context["cl"].paginator.count <= ROWS * 0.2


# --- deep pages: the keys first, then their rows ----------------------------------------------------
PARTNERS = 7
PER_PAGE = 2
KEYS_ONLY = re.compile(r'SELECT "referrals_referral"\."id"( AS "pk")? FROM ')


@pytest.fixture
def referrals(db, api, origination, partnership_manager, compliance_officer):
    """Two applicants, each referred to seven partners through the intake API. The first one's
    referrals get created_at values with ties (so only the ``-pk`` tie-break orders them) and two of
    them fail; the second one is never found by the search."""
    codes = []
    for seq in range(PARTNERS):
        partner = PartnerFactory(code=f"DEEP_{seq}")
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer, priority=10 + seq)
        codes.append(partner.code)
    text = consent_text(actor=compliance_officer)
    applicants = []
    for seq in (1, 2):
        response = api(origination).post(
            "/api/v1/applicants/", intake_payload(text=text, partners=codes, seq=seq), format="json"
        )
        assert response.status_code == 201, response.content
        applicants.append(Applicant.objects.get(pk=response.json()["id"]))
    searched = applicants[0]
    found = list(searched.referrals.order_by("partner__code"))
    assert len(found) == PARTNERS
    base = timezone.now() - datetime.timedelta(days=1)
    for index, referral in enumerate(found):
        Referral.objects.filter(pk=referral.pk).update(created_at=base + datetime.timedelta(minutes=index // 2))
    Referral.objects.filter(pk__in=[found[1].pk, found[4].pk]).update(status=Referral.Status.FAILED)
    status = found[0].status
    assert Referral.objects.filter(applicant=searched, status=status).count() == PARTNERS - 2
    return {"q": searched.external_id, "status__exact": status}


def referral_page(client, params: dict, page: int):
    with CaptureQueriesContext(connection) as captured:
        response = client.get(changelist_url("referrals.Referral"), {**params, "p": str(page)})
    assert response.status_code == 200
    return response.context["cl"], captured.captured_queries


def keys_only(queries) -> list[str]:
    """The deferred join's first query: the primary keys of a page, nothing else."""
    return [q["sql"] for q in queries if KEYS_ONLY.match(q["sql"])]


@pytest.fixture
def small_pages(monkeypatch):
    """Two referrals a page, and the keys-first lookup from the second page on (offset 2)."""
    monkeypatch.setattr(admin.site._registry[Referral], "list_per_page", PER_PAGE)
    monkeypatch.setattr(EstimatedCountPaginator, "deferred_join_offset", PER_PAGE)


def test_a_deep_page_shows_exactly_the_rows_of_the_plain_offset_query_in_order(
    superuser_client, referrals, small_pages
):
    """Filtered by status and searched by the applicant's external id: five referrals, three pages."""
    params = referrals
    shown = []
    for page in (1, 2, 3):
        cl, queries = referral_page(superuser_client, params, page)
        bottom = (page - 1) * PER_PAGE
        plain = [r.pk for r in cl.queryset[bottom : bottom + PER_PAGE]]  # the OFFSET query it replaces
        assert [r.pk for r in cl.result_list] == plain
        assert len(keys_only(queries)) == (0 if page == 1 else 1)
        shown += plain
    expected = Referral.objects.filter(applicant__external_id=params["q"], status=params["status__exact"])
    assert shown == [r.pk for r in sorted(expected, key=lambda r: (r.created_at, r.pk), reverse=True)]


def test_a_deep_page_costs_one_query_more_than_a_first_page_and_a_first_page_none(
    superuser_client, referrals, small_pages, monkeypatch
):
    _, first = referral_page(superuser_client, referrals, 1)
    _, deep = referral_page(superuser_client, referrals, 3)
    assert len(deep) == len(first) + 1
    assert len(deep) <= QUERY_BUDGET
    monkeypatch.setattr(EstimatedCountPaginator, "deferred_join_offset", 10**9)  # the plain slice everywhere
    _, first_plain = referral_page(superuser_client, referrals, 1)
    _, deep_plain = referral_page(superuser_client, referrals, 3)
    assert len(first) == len(first_plain)  # a first page gains no query
    assert len(deep_plain) == len(first_plain)
    assert keys_only(deep_plain) == []


@pytest.mark.parametrize("label", project_admins())
def test_every_changelist_shows_the_same_rows_on_a_deep_page(
    superuser_client, some_rows, referrals, compliance_officer, monkeypatch, label
):
    """One row a page and the keys-first lookup from the second page on: whatever each changelist's
    queryset holds (annotations, prefetches, joined relations), page 2 is what the OFFSET gives."""
    consent_text(actor=compliance_officer, code="referral-consent-deep-v2")  # two consent texts (annotated)
    monkeypatch.setattr(admin.site._registry[apps.get_model(label)], "list_per_page", 1)
    monkeypatch.setattr(EstimatedCountPaginator, "deferred_join_offset", 1)
    url = changelist_url(label)
    first = superuser_client.get(url)
    if first.context["cl"].result_count < 2:
        pytest.skip(f"{label}: fewer than two rows here")
    with CaptureQueriesContext(connection) as captured:
        response = superuser_client.get(url, {"p": "2"})
    assert response.status_code == 200
    cl = response.context["cl"]
    assert [row.pk for row in cl.result_list] == [row.pk for row in cl.queryset[1:2]]
    assert len(cl.result_list) == 1
    assert len(captured.captured_queries) == len(first_queries(superuser_client, url)) + 1


def first_queries(client, url: str) -> list[dict]:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return captured.captured_queries


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda qs: qs.distinct(), id="distinct"),
        pytest.param(lambda qs: qs.order_by().union(Partner.objects.order_by()).order_by("-code"), id="union"),
        pytest.param(lambda qs: qs.values("pk", "code"), id="values"),
        pytest.param(
            lambda qs: qs.annotate(place=Window(RowNumber(), order_by=F("code").desc())).order_by("place"),
            id="window",
        ),
        pytest.param(lambda qs: list(qs), id="list"),
    ],
)
def test_the_plain_slice_where_keys_would_not_be_rows(db, monkeypatch, make):
    for seq in range(5):
        PartnerFactory(code=f"SLICE_{seq}")
    monkeypatch.setattr(EstimatedCountPaginator, "deferred_join_offset", 1)
    object_list = make(Partner.objects.order_by("-code"))
    expected = list(object_list[2:4])
    paginator = EstimatedCountPaginator(object_list, per_page=2)
    paginator.count  # noqa: B018 (counted first, as the changelist does)
    page = paginator.page(2)
    assert not paginator.can_defer_join(object_list)
    assert list(page.object_list) == expected


def test_a_deep_page_keeps_prefetch_related(
    db, partnership_manager, compliance_officer, monkeypatch, django_assert_num_queries
):
    partners = [PartnerFactory(code=f"PREFETCH_{seq}") for seq in range(4)]
    for partner in partners:
        make_contract(partner, drafter=partnership_manager, approver=compliance_officer)
    monkeypatch.setattr(EstimatedCountPaginator, "deferred_join_offset", 1)
    queryset = Partner.objects.order_by("code").prefetch_related("contracts")
    paginator = EstimatedCountPaginator(queryset, per_page=2)
    paginator.count  # noqa: B018 (counted first, as the changelist does)
    with django_assert_num_queries(3):  # the keys, the rows, their contracts
        rows = list(paginator.page(2).object_list)
        assert [len(row.contracts.all()) for row in rows] == [1, 1]
    assert [row.pk for row in rows] == [p.pk for p in partners[2:]]


def test_first_pages_take_the_plain_slice(superuser_client, referrals):
    assert EstimatedCountPaginator.deferred_join_offset > 0
    _, queries = referral_page(superuser_client, {}, 1)
    assert keys_only(queries) == []
