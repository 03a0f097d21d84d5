"""Two factors for every back-office user: a password and a one-time code (django-otp).

- **Sign-in** (:class:`LoginForm`, the admin's login form): username, password and the six-digit
  code from the authenticator app — or one of the single-use backup codes. A user who has not
  enrolled yet signs in with the password alone and is sent straight to enrolment.
- **Enrolment** (:func:`two_factor`, ``/admin/2fa/``): a QR code for the authenticator app (and
  the key, for typing in), confirmed by one code; then ten backup codes, shown once.
- **Refusal** (:class:`RequireTwoFactorMiddleware`): a signed-in user whose session has no second
  factor gets no page (sent to ``/admin/2fa/``) and no session-authenticated API call (403).
  API clients with a token (other systems) are not people: their token is their credential.
- **Lockout**: a wrong code counts as a failed sign-in for django-axes, like a wrong password.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

import qrcode
import qrcode.image.svg
import structlog
from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.decorators import login_required
from django.contrib.auth.signals import user_login_failed
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _t
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST
from django_otp import login as otp_login
from django_otp import user_has_device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

log = structlog.get_logger(__name__)

TOTP_NAME = "authenticator"
BACKUP_NAME = "backup codes"
BACKUP_COUNT = 10

# Paths a signed-in user without the second factor may still reach.
EXEMPT_PREFIXES = ("/admin/login/", "/admin/logout/", "/admin/2fa/", "/admin/jsi18n/", "/i18n/", "/static/")
EXEMPT_EXACT = ("/metrics", "/health/")
# Answered with 403 rather than sent to enrolment: machine-readable paths.
API_PREFIXES = ("/api/v1/", "/api/schema/")


def _normalise(token: str) -> str:
    return "".join(token.split()).replace("-", "").lower()


def verify_code(user, token: str):
    """The user's confirmed device that accepts ``token`` (and has now used it up), or ``None``.

    Six digits are tried on the authenticator, anything else on the backup codes; each device's own
    throttling (django-otp) applies, so guessing slows down even before the lockout."""
    token = _normalise(token)
    if not token:
        return None
    model = TOTPDevice if token.isdigit() and len(token) == 6 else StaticDevice
    with transaction.atomic():
        for device in model.objects.select_for_update().filter(user=user, confirmed=True):
            allowed, _extra = device.verify_is_allowed()
            if allowed and device.verify_token(token):
                return device
    return None


def _failed(request: HttpRequest | None, user) -> None:
    """A wrong code is a failed sign-in: django-axes counts it, config.security logs it."""
    user_login_failed.send(sender=__name__, credentials={"username": user.get_username()}, request=request)


class LoginForm(AdminAuthenticationForm):
    otp_token = forms.CharField(
        label=_("One-time code"),
        required=False,
        max_length=32,
        help_text=_("The six digits your authenticator app shows, or one of your backup codes."),
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "token_required": _("Enter the one-time code from your authenticator app."),
        "invalid_token": _("That one-time code is wrong or already used."),
    }

    def clean(self):
        cleaned = super().clean()  # the password (django-axes refuses a locked-out username here)
        user = self.user_cache
        if user is not None and user_has_device(user):
            token = cleaned.get("otp_token") or ""
            if not token.strip():
                raise forms.ValidationError(self.error_messages["token_required"], code="token_required")
            device = verify_code(user, token)
            if device is None:
                _failed(self.request, user)
                raise forms.ValidationError(self.error_messages["invalid_token"], code="invalid_token")
            user.otp_device = device  # django-otp marks the session verified when login() runs
        return cleaned


class CodeForm(forms.Form):
    token = forms.CharField(
        label=_("One-time code"),
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )


class RequireTwoFactorMiddleware:
    """After django-otp's middleware: refuses what a session without a second factor asks for."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and not user.is_verified() and not self._exempt(request):
            log.info("two_factor_required", user_id=user.pk, username=user.get_username(), path=request.path)
            if request.path.startswith(API_PREFIXES):
                return JsonResponse(
                    {"detail": _t("Sign in with your one-time code first (two-factor sign-in is required).")},
                    status=403,
                )
            return redirect(f"{reverse('two-factor')}?{urlencode({'next': request.get_full_path()})}")
        return self.get_response(request)

    @staticmethod
    def _exempt(request: HttpRequest) -> bool:
        if request.path.startswith(EXEMPT_PREFIXES) or request.path in EXEMPT_EXACT:
            return True
        # A call carrying its own credentials (a DRF token) is judged by that credential.
        return request.path.startswith("/api/") and "HTTP_AUTHORIZATION" in request.META


def qr_svg(data: str) -> str:
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    return image.to_string(encoding="unicode")


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return reverse("admin:index")


def _new_backup_codes(user) -> list[str]:
    """Replaces the user's backup codes with ten fresh ones; the caller shows them once."""
    with transaction.atomic():
        device, _created = StaticDevice.objects.get_or_create(user=user, name=BACKUP_NAME, defaults={"confirmed": True})
        device.token_set.all().delete()
        codes = [StaticToken.random_token() for _ in range(BACKUP_COUNT)]
        StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    return codes


def _context(request: HttpRequest, **extra) -> dict:
    from django.contrib import admin

    return {**admin.site.each_context(request), "title": _t("Two-factor sign-in"), **extra}


@login_required
def two_factor(request: HttpRequest) -> HttpResponse:
    """Enrol (QR code, confirm one code, see backup codes), verify a session, or see the status."""
    user = request.user
    next_url = _next_url(request)
    confirmed = TOTPDevice.objects.filter(user=user, confirmed=True).first()

    if confirmed is None:  # enrolment
        device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
        if device is None:
            device = TOTPDevice.objects.create(user=user, name=TOTP_NAME, confirmed=False)
        form = CodeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            if device.verify_token(_normalise(form.cleaned_data["token"])):
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                otp_login(request, device)
                codes = _new_backup_codes(user)
                log.info("two_factor_enrolled", user_id=user.pk, username=user.get_username())
                return render(request, "twofactor/backup_codes.html", _context(request, codes=codes, next=next_url))
            form.add_error("token", _t("That code does not match: check the time on your phone and try again."))
        return render(
            request,
            "twofactor/enrol.html",
            _context(
                request,
                form=form,
                next=next_url,
                qr=mark_safe(qr_svg(device.config_url)),  # noqa: S308 - SVG made by qrcode from our own URL
                secret=_grouped(device.config_url),
            ),
        )

    if not user.is_verified():  # enrolled, but this session has no second factor yet
        form = CodeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            device = verify_code(user, form.cleaned_data["token"])
            if device is not None:
                otp_login(request, device)
                log.info("two_factor_verified", user_id=user.pk, username=user.get_username())
                return redirect(next_url)
            _failed(request, user)
            form.add_error("token", LoginForm.error_messages["invalid_token"])
        return render(request, "twofactor/verify.html", _context(request, form=form, next=next_url))

    backup = StaticDevice.objects.filter(user=user, name=BACKUP_NAME).first()
    return render(
        request,
        "twofactor/status.html",
        _context(
            request,
            device=confirmed,
            backup_left=backup.token_set.count() if backup else 0,
            backup_total=BACKUP_COUNT,
        ),
    )


def _grouped(config_url: str) -> str:
    """The base32 key from the otpauth URL, in groups of four for typing into an app by hand."""
    from urllib.parse import parse_qs, urlparse

    secret = parse_qs(urlparse(config_url).query)["secret"][0]
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@login_required
@require_POST
def new_backup_codes(request: HttpRequest) -> HttpResponse:
    if not request.user.is_verified():  # the middleware exempts /admin/2fa/: check here
        return redirect("two-factor")
    codes = _new_backup_codes(request.user)
    log.info("two_factor_backup_codes_renewed", user_id=request.user.pk, username=request.user.get_username())
    return render(request, "twofactor/backup_codes.html", _context(request, codes=codes, next=reverse("admin:index")))


urlpatterns = [
    path("", two_factor, name="two-factor"),
    path("backup-codes/", new_backup_codes, name="two-factor-backup-codes"),
]
