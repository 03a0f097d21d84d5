"""Who signed in, who failed to, and who was refused: a log event and a counter for each.

Sign-ins: receivers of Django's ``user_logged_in``, ``user_login_failed`` and ``user_logged_out``
log ``login_succeeded``, ``login_failed`` (with the username tried — never the password: Django
has already blanked it, and only the username is read here) and ``logged_out``; django-axes'
``user_locked_out`` logs ``login_locked_out``; all are counted in ``spillway_logins_total{outcome}``.
(A wrong one-time code is a failed sign-in too: config.twofactor sends ``user_login_failed``.)

Refusals: :class:`AccessDeniedMiddleware` logs ``access_denied`` for every response answered 403
— the admin's ``PermissionDenied``, DRF's 403s, a CSRF failure, ``/metrics`` without its token —
or 401 (an API call without valid credentials, a partner callback whose signature fails), with
the status, user, method and path (the request id comes from the bound context,
``config.requestid``), and counts it in ``spillway_access_denied_total{kind}`` (``admin``,
``api`` or ``other``). Looking at the status code rather than at exceptions catches every way a
refusal is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.http import HttpRequest, HttpResponse

from config.metrics import ACCESS_DENIED, LOGINS

log = structlog.get_logger(__name__)


def _user_fields(user: Any) -> dict[str, Any]:
    if user is None or not getattr(user, "is_authenticated", False):
        return {"user_id": None, "username": None}
    return {"user_id": user.pk, "username": user.get_username()}


def _client(request: HttpRequest | None) -> str | None:
    return request.META.get("REMOTE_ADDR") if request is not None else None


def _logged_in(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    LOGINS.labels(outcome="success").inc()
    log.info("login_succeeded", **_user_fields(user), client=_client(request))


def _login_failed(sender: Any, credentials: dict | None = None, request: HttpRequest | None = None, **kwargs) -> None:
    LOGINS.labels(outcome="failure").inc()
    username = (credentials or {}).get("username")  # only this key: nothing else of the credentials
    log.warning("login_failed", username=username if isinstance(username, str) else None, client=_client(request))


def _logged_out(sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    LOGINS.labels(outcome="logout").inc()
    log.info("logged_out", **_user_fields(user), client=_client(request))


def _locked_out(sender: Any, request: HttpRequest | None = None, username: str | None = None, **kwargs) -> None:
    """django-axes refused a sign-in: too many failures for the username or the address."""
    LOGINS.labels(outcome="locked_out").inc()
    log.warning("login_locked_out", username=username if isinstance(username, str) else None, client=_client(request))


def connect_signals() -> None:
    """Called once from ``ConfigConfig.ready``."""
    user_logged_in.connect(_logged_in, dispatch_uid="spillway.security.logged_in")
    user_login_failed.connect(_login_failed, dispatch_uid="spillway.security.login_failed")
    user_logged_out.connect(_logged_out, dispatch_uid="spillway.security.logged_out")
    user_locked_out.connect(_locked_out, dispatch_uid="spillway.security.locked_out")


def access_kind(path: str) -> str:
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith("/api/"):
        return "api"
    return "other"


class AccessDeniedMiddleware:
    """Records every 401 and 403 answer; placed after the authentication middleware, so the user is known
    (DRF sets the token's user on the Django request too)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code in (401, 403):
            kind = access_kind(request.path)
            ACCESS_DENIED.labels(kind=kind).inc()
            log.warning(
                "access_denied",
                status=response.status_code,
                kind=kind,
                method=request.method,
                path=request.path,
                **_user_fields(getattr(request, "user", None)),
                client=_client(request),
            )
        return response
