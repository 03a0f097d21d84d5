"""Signing in as people do: password and a one-time code (config.twofactor).

- :class:`TwoFactorClient` — the ``client`` fixture: ``force_login(user)`` also gives the session
  its second factor, as a real sign-in would; ``force_login(user, verified=False)`` is a session
  with the password only (refused everywhere but enrolment).
- :func:`authenticator` — the user's confirmed TOTP device (made if missing).
- :func:`current_code` — a code that device accepts now (never one it has already used).
- :func:`sign_in` — the admin login form in a Playwright page, with the code.
"""

from __future__ import annotations

import time

from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

PASSWORD = "correct-horse-battery"  # tests.factories.UserFactory's


def authenticator(user) -> TOTPDevice:
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    return device or TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)


def code_at(device: TOTPDevice, step: int) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.t = lambda: step  # the counter the code is for
    return f"{totp.token():0{device.digits}d}"


def current_code(device: TOTPDevice) -> str:
    """A code for now, or for the next step when this step's code was already used (the device
    accepts one step ahead: OTP_TOTP_TOLERANCE); waits for the clock when even that is used."""
    while True:
        device.refresh_from_db()
        totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
        now = totp.t()
        step = max(now, device.last_t + 1)
        if step <= now + device.tolerance:
            return code_at(device, step)
        time.sleep(1)


class TwoFactorClient(Client):
    def force_login(self, user, backend=None, verified: bool = True):
        super().force_login(user, backend)
        if verified:
            session = self.session
            session[DEVICE_ID_SESSION_KEY] = authenticator(user).persistent_id
            session.save()


def sign_in(page, base_url: str, user, password: str = PASSWORD, *, expect_ok: bool = True) -> None:
    """The admin's login form: username, password, one-time code."""
    from playwright.sync_api import expect

    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", password)
    page.fill("#id_otp_token", current_code(authenticator(user)))
    page.click('#login-form input[type="submit"]')
    if expect_ok:
        expect(page.locator("#user-tools")).to_contain_text(user.get_username())
