"""Every changelist stays fast at millions of rows: no ``COUNT(*)`` over a whole table, a bounded
number of queries whatever the number of rows, and on PostgreSQL an estimated total (perf-notes.md).
"""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from config.admin_tools import EstimatedCountPaginator, LargeTableAdminMixin
from referrals.models import Applicant, CallbackEvent
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
