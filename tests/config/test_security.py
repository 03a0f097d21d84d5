"""Security: sign-ins and refusals are logged and counted; the API is throttled."""

from __future__ import annotations

import logging

import pytest
from django.core.cache import cache
from prometheus_client import REGISTRY
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from tests.factories import UserFactory

PASSWORD = "correct-horse-battery"  # tests.factories.UserFactory's
WRONG = "Wrong-Password-7391"


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def events(caplog, name: str) -> list[dict]:
    """The structlog events called ``name`` (a dict per event, with the bound context)."""
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == name]


@pytest.fixture
def log(caplog):
    with caplog.at_level(logging.INFO):
        yield caplog


# --- sign-ins --------------------------------------------------------------------------------------
def test_login_is_logged_and_counted(client, db, log):
    user = UserFactory(username="signer")
    before = counted("spillway_logins_total", outcome="success")
    response = client.post(
        "/admin/login/", {"username": "signer", "password": PASSWORD}, headers={"X-Request-ID": "r-1"}
    )
    assert response.status_code == 302
    [event] = events(log, "login_succeeded")
    assert event["user_id"] == user.pk
    assert event["username"] == "signer"
    assert event["request_id"] == "r-1"
    assert counted("spillway_logins_total", outcome="success") == before + 1
    assert PASSWORD not in log.text


def test_failed_login_is_logged_without_the_password(client, db, log):
    UserFactory(username="signer")
    before = counted("spillway_logins_total", outcome="failure")
    response = client.post("/admin/login/", {"username": "signer", "password": WRONG})
    assert response.status_code == 200  # the form again, with its error
    [event] = events(log, "login_failed")
    assert event["username"] == "signer"
    assert WRONG not in str(event)
    assert WRONG not in log.text
    assert all(WRONG not in r.getMessage() for r in log.records)
    assert counted("spillway_logins_total", outcome="failure") == before + 1


def test_logout_is_logged_and_counted(client, db, log):
    user = UserFactory(username="signer")
    client.force_login(user)
    before = counted("spillway_logins_total", outcome="logout")
    client.post("/admin/logout/")
    [event] = events(log, "logged_out")
    assert event["username"] == "signer"
    assert counted("spillway_logins_total", outcome="logout") == before + 1


# --- refusals --------------------------------------------------------------------------------------
def test_api_403_is_logged_and_counted(api, outsider, log):
    before = counted("spillway_access_denied_total", kind="api")
    response = api(outsider).get("/api/v1/partners/", headers={"X-Request-ID": "r-api"})
    assert response.status_code == 403
    [event] = events(log, "access_denied")
    assert event["path"] == "/api/v1/partners/"
    assert event["method"] == "GET"
    assert event["username"] == "outsider"
    assert event["user_id"] == outsider.pk
    assert event["kind"] == "api"
    assert event["request_id"] == "r-api"
    assert counted("spillway_access_denied_total", kind="api") == before + 1


def test_admin_403_is_logged_and_counted(client, db, log):
    staff = UserFactory(username="staff-without-roles", is_staff=True)
    client.force_login(staff)
    before = counted("spillway_access_denied_total", kind="admin")
    response = client.get("/admin/partners/partner/")
    assert response.status_code == 403
    page = response.content.decode()
    assert 'id="access-denied"' in page  # the back office's own refusal page, in Chinese
    assert "无权访问" in page
    assert "staff-without-roles" in page  # the admin's frame: who is signed in
    [event] = events(log, "access_denied")
    assert event["path"] == "/admin/partners/partner/"
    assert event["username"] == "staff-without-roles"
    assert event["kind"] == "admin"
    assert event["request_id"] == response["X-Request-ID"]
    assert counted("spillway_access_denied_total", kind="admin") == before + 1


def test_an_api_call_without_valid_credentials_is_recorded_too(api, db, log):
    before = counted("spillway_access_denied_total", kind="api")
    anonymous = api().get("/api/v1/partners/")
    forged = api().get("/api/v1/partners/", headers={"Authorization": "Token not-a-real-token"})
    assert (anonymous.status_code, forged.status_code) == (401, 401)
    recorded = events(log, "access_denied")
    assert [(e["status"], e["kind"], e["path"], e["user_id"]) for e in recorded] == [
        (401, "api", "/api/v1/partners/", None),
        (401, "api", "/api/v1/partners/", None),
    ]
    assert counted("spillway_access_denied_total", kind="api") == before + 2


def test_allowed_requests_are_not_recorded(api, compliance_officer, log):
    assert api(compliance_officer).get("/api/v1/partners/").status_code == 200
    assert events(log, "access_denied") == []


# --- throttling ------------------------------------------------------------------------------------
@pytest.fixture
def tiny_rates(monkeypatch):
    """Rates are read into the throttle classes when DRF is imported: patch them there."""
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "2/min"})
    cache.clear()
    yield
    cache.clear()


def test_throttle_is_configured(settings):
    rest = settings.REST_FRAMEWORK
    assert rest["DEFAULT_THROTTLE_CLASSES"] == ["config.api.UserRateThrottle", "config.api.AnonRateThrottle"]
    assert rest["DEFAULT_THROTTLE_RATES"] == {"user": "6000/min", "anon": "60/min"}


def test_user_over_the_rate_gets_429_naming_the_wait(api, compliance_officer, tiny_rates):
    client = api(compliance_officer)
    for _ in range(3):
        assert client.get("/api/v1/partners/").status_code == 200
    response = client.get("/api/v1/partners/")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert response["Retry-After"] in response.json()["detail"]  # "…{wait} 秒…": how long to wait


class OpenView(APIView):
    """An endpoint anyone may call (DRF checks permissions before throttles: a refused anonymous
    call is a 401 and never counts, so the anonymous rate bites only where anonymity is allowed)."""

    permission_classes = [AllowAny]

    def get(self, request):
        return Response({"ok": True})


def test_anonymous_over_the_rate_gets_429(db, tiny_rates):
    view = OpenView.as_view()
    factory = APIRequestFactory()
    for _ in range(2):
        assert view(factory.get("/open/", REMOTE_ADDR="203.0.113.7")).status_code == 200
    response = view(factory.get("/open/", REMOTE_ADDR="203.0.113.7"))
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert view(factory.get("/open/", REMOTE_ADDR="203.0.113.8")).status_code == 200  # per client address
