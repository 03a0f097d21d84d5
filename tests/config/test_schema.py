"""The served OpenAPI schema describes what is implemented, and the docs work offline."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command


def test_schema_generates_without_warnings_and_validates():
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    assert '"openapi"' in out.getvalue()


@pytest.fixture
def schema(client, auditor):
    client.force_login(auditor)
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_schema_lists_the_partner_and_contract_endpoints(schema):
    paths = schema["paths"]
    assert set(paths["/api/v1/partners/"]) >= {"get", "post"}
    assert set(paths["/api/v1/partners/{code}/"]) >= {"get", "patch"}
    for action in ("submit", "approve", "reject", "terminate"):
        assert "post" in paths[f"/api/v1/contracts/{{id}}/{action}/"]
    assert "delete" not in paths["/api/v1/partners/{code}/"]


def test_schema_marks_the_secret_write_only(schema):
    components = schema["components"]["schemas"]
    assert "api_secret" in components["PartnerRequest"]["properties"]
    assert "api_secret" not in components["Partner"]["properties"]


def test_docs_page_uses_only_local_static_files(client, auditor):
    client.force_login(auditor)
    html = client.get("/api/docs/").content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources
    assert all(not s.startswith(("http://", "https://", "//")) for s in sources), sources


def test_schema_and_docs_need_a_login(client, db):
    assert client.get("/api/schema/").status_code in {401, 403}
    assert client.get("/api/docs/").status_code in {401, 403}
