"""Two factors for every back-office user, and the lockout (config.twofactor, django-otp, django-axes)."""

from __future__ import annotations

import logging
import re

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.factories import UserFactory
from tests.signin import PASSWORD, authenticator, code_at, current_code

WRONG = "Wrong-Password-7391"


def events(caplog, name: str) -> list[dict]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == name]


def sign_in(client: Client, username: str, password: str = PASSWORD, code: str = "", **extra):
    data = {"username": username, "password": password, "otp_token": code, "next": "/admin/"}
    return client.post("/admin/login/", data, **extra)


@pytest.fixture
def officer(db):
    return UserFactory(username="officer", roles=["compliance_officer"])


@pytest.fixture
def enrolled(officer):
    authenticator(officer)
    return officer


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


# --- a session without the second factor gets nothing ----------------------------------------------
@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/partners/partner/", "/admin/referrals/applicant/", "/admin/settlements/statement/"]
)
def test_pages_are_refused_to_a_session_with_the_password_only(client, officer, path):
    client.force_login(officer, verified=False)
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/2fa/?next=")


def test_the_session_api_is_refused_without_the_second_factor_but_a_token_is_its_own_credential(client, officer, api):
    client.force_login(officer, verified=False)
    response = client.get("/api/v1/applicants/")
    assert response.status_code == 403
    assert "one-time code" in response.json()["detail"] or "动态" in response.json()["detail"]
    assert api(officer).get("/api/v1/applicants/").status_code == 200


def test_a_verified_session_gets_its_pages(client, officer):
    client.force_login(officer)
    assert client.get("/admin/").status_code == 200
    assert client.get("/api/v1/applicants/").status_code == 200


def test_logging_out_and_switching_language_stay_open_without_the_second_factor(client, officer):
    client.force_login(officer, verified=False)
    assert client.post("/i18n/setlang/", {"language": "en", "next": "/admin/2fa/"}).status_code == 302
    assert client.post("/admin/logout/").status_code == 200
    assert not signed_in(client)


# --- enrolment ---------------------------------------------------------------------------------------
def test_first_sign_in_goes_through_enrolment_with_a_qr_code_and_backup_codes(client, officer, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0  # a wrong code otherwise makes the device wait a second
    response = sign_in(client, "officer")  # no device yet: the password is enough to reach enrolment
    assert response.status_code == 302
    response = client.get("/admin/", follow=True)
    assert response.redirect_chain[-1][0] == "/admin/2fa/?next=%2Fadmin%2F"
    page = response.content.decode()
    assert "<svg" in page
    assert 'id="qr-code"' in page
    secret = re.search(r'id="otp-secret">([A-Z2-7 ]+)<', page).group(1)
    device = TOTPDevice.objects.get(user=officer)
    assert not device.confirmed
    assert secret.replace(" ", "") in device.config_url

    wrong = client.post("/admin/2fa/", {"token": "000000", "next": "/admin/"})
    assert wrong.status_code == 200
    assert wrong.context["form"].errors["token"]
    device.refresh_from_db()
    assert not device.confirmed

    done = client.post("/admin/2fa/", {"token": code_at(device, device_step(device)), "next": "/admin/"})
    assert done.status_code == 200
    codes = done.context["codes"]
    assert len(codes) == 10
    assert len(set(codes)) == 10
    device.refresh_from_db()
    assert device.confirmed
    assert StaticDevice.objects.get(user=officer).token_set.count() == 10
    assert client.get("/admin/").status_code == 200  # this session is verified now


def device_step(device: TOTPDevice) -> int:
    from django_otp.oath import TOTP

    return TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).t()


def test_the_enrolment_page_shows_the_status_once_enrolled_and_renews_backup_codes(client, enrolled):
    client.force_login(enrolled)
    old = client.post("/admin/2fa/backup-codes/").context["codes"]
    page = client.get("/admin/2fa/")
    assert page.status_code == 200
    assert page.context["backup_left"] == 10
    new = client.post("/admin/2fa/backup-codes/").context["codes"]
    assert not set(old) & set(new)
    assert set(StaticDevice.objects.get(user=enrolled).token_set.values_list("token", flat=True)) == set(new)


def test_backup_codes_cannot_be_renewed_without_the_second_factor(client, enrolled):
    client.force_login(enrolled, verified=False)
    response = client.post("/admin/2fa/backup-codes/")
    assert response.status_code == 302
    assert not StaticDevice.objects.filter(user=enrolled).exists()


# --- signing in once enrolled ----------------------------------------------------------------------------
def test_an_enrolled_user_needs_the_code(client, enrolled):
    response = sign_in(client, "officer")
    assert response.status_code == 200
    assert [e.code for e in response.context["form"].errors.as_data()["__all__"]] == ["token_required"]
    assert not signed_in(client)


def test_a_wrong_code_is_a_failed_sign_in(client, enrolled, caplog):
    with caplog.at_level(logging.INFO):
        response = sign_in(client, "officer", code="123456")
    assert response.status_code == 200
    assert [e.code for e in response.context["form"].errors.as_data()["__all__"]] == ["invalid_token"]
    assert not signed_in(client)
    assert [e["username"] for e in events(caplog, "login_failed")] == ["officer"]
    assert AccessAttempt.objects.get(username="officer").failures_since_start == 1


def test_the_right_code_signs_in_with_both_factors(client, enrolled):
    response = sign_in(client, "officer", code=current_code(authenticator(enrolled)))
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_a_code_works_once(client, enrolled):
    device = authenticator(enrolled)
    code = current_code(device)
    assert sign_in(client, "officer", code=code).status_code == 302
    other = Client()
    assert sign_in(other, "officer", code=code).status_code == 200
    assert not signed_in(other)


def test_a_backup_code_signs_in_once(client, enrolled):
    client.force_login(enrolled)
    code = client.post("/admin/2fa/backup-codes/").context["codes"][0]
    client.post("/admin/logout/")
    assert sign_in(client, "officer", code=code).status_code == 302
    assert client.get("/admin/").status_code == 200
    client.post("/admin/logout/")
    assert sign_in(client, "officer", code=code).status_code == 200
    assert not signed_in(client)


def test_a_password_only_session_of_an_enrolled_user_verifies_on_the_2fa_page(client, enrolled):
    client.force_login(enrolled, verified=False)
    page = client.get("/admin/2fa/?next=/admin/referrals/applicant/")
    assert page.status_code == 200
    assert 'id="verify-form"' in page.content.decode()
    response = client.post(
        "/admin/2fa/", {"token": current_code(authenticator(enrolled)), "next": "/admin/referrals/applicant/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/admin/referrals/applicant/"
    assert client.get("/admin/referrals/applicant/").status_code == 200


def test_the_2fa_page_never_redirects_off_site(client, enrolled):
    client.force_login(enrolled, verified=False)
    response = client.post(
        "/admin/2fa/", {"token": current_code(authenticator(enrolled)), "next": "https://evil.example/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/admin/"


# --- lockout (django-axes) -------------------------------------------------------------------------------
def test_repeated_wrong_passwords_lock_the_account_even_with_the_right_ones_after(client, enrolled, settings, caplog):
    assert settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        assert sign_in(client, "officer", WRONG).status_code == 200
    with caplog.at_level(logging.INFO):
        assert sign_in(client, "officer", WRONG).status_code == 429  # the fifth failure locks
    [event] = events(caplog, "login_locked_out")
    assert event["username"] == "officer"
    response = sign_in(client, "officer", code=current_code(authenticator(enrolled)))
    assert response.status_code == 429
    assert 'id="lockout"' in response.content.decode()
    assert not signed_in(client)


def test_repeated_wrong_codes_lock_the_account_too(client, enrolled):
    for code in ("111111", "222222", "333333", "444444"):
        assert sign_in(client, "officer", code=code).status_code == 200
    assert sign_in(client, "officer", code="555555").status_code == 429
    response = sign_in(client, "officer", code=current_code(authenticator(enrolled)))
    assert response.status_code == 429
    assert not signed_in(client)


def test_the_lockout_holds_for_the_username_from_another_address(client, enrolled):
    for _ in range(5):
        sign_in(client, "officer", WRONG, REMOTE_ADDR="10.0.0.1")
    response = sign_in(Client(), "officer", code=current_code(authenticator(enrolled)), REMOTE_ADDR="10.0.0.2")
    assert response.status_code == 429


def test_guessing_many_usernames_from_one_address_locks_the_address(client, db):
    for name in ("a1", "a2", "a3", "a4", "a5"):
        sign_in(client, name, WRONG, REMOTE_ADDR="10.0.0.9")
    UserFactory(username="innocent")
    assert sign_in(Client(), "innocent", REMOTE_ADDR="10.0.0.9").status_code == 429
    assert sign_in(Client(), "innocent", REMOTE_ADDR="10.0.0.10").status_code == 302


def test_an_administrator_lifts_a_lockout(client, enrolled):
    for _ in range(5):
        sign_in(client, "officer", WRONG)
    call_command("axes_reset_username", "officer")
    assert sign_in(client, "officer", code=current_code(authenticator(enrolled))).status_code == 302


def test_a_success_resets_the_count(client, enrolled):
    for _ in range(4):
        sign_in(client, "officer", WRONG)
    assert sign_in(client, "officer", code=current_code(authenticator(enrolled))).status_code == 302
    client.post("/admin/logout/")
    for _ in range(4):
        sign_in(client, "officer", WRONG)
    assert sign_in(client, "officer", code=current_code(authenticator(enrolled))).status_code == 302


# --- the demo's code printer ---------------------------------------------------------------------------
def test_otp_code_prints_what_the_app_would_show_and_only_in_development(client, officer, settings):
    import io

    from django.core.management.base import CommandError

    settings.DEBUG = True  # pytest-django runs tests with DEBUG off
    sign_in(client, "officer")
    client.get("/admin/2fa/")  # the enrolment page makes the pending device
    out = io.StringIO()
    call_command("otp_code", "officer", stdout=out)
    response = client.post("/admin/2fa/", {"token": out.getvalue().strip(), "next": "/admin/"})
    assert response.status_code == 200
    assert len(response.context["codes"]) == 10

    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG"):
        call_command("otp_code", "officer", stdout=io.StringIO())
