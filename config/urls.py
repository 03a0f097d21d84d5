"""URLs: the admin (the back office), the REST API v1, its schema and docs, health and metrics."""

import datetime

from csp.decorators import csp_update
from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from health_check.views import HealthCheckView

from config import twofactor
from config.metrics import metrics_view

health_checks = [
    "health_check.checks.Database",
    "health_check.checks.Cache",
    (
        "health_check.contrib.celery.Ping",
        {"timeout": datetime.timedelta(seconds=settings.HEALTH_CHECK_CELERY_TIMEOUT), "limit": 1},
    ),
]

admin.site.site_header = _("Spillway declined-lead referral")
admin.site.site_title = _("Spillway")
admin.site.index_title = _("Back office")
admin.site.login_form = twofactor.LoginForm  # password and one-time code

urlpatterns = [
    path("admin/2fa/", include(twofactor.urlpatterns)),  # before the admin's own catch-all
    path("admin/", admin.site.urls),
    path("api/v1/", include("partners.api.urls")),
    path("api/v1/", include("referrals.api.urls")),
    path("api/v1/", include("settlements.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up code as a script of its own (?script): no inline
    # script, so the page runs under the Content-Security-Policy's script-src 'self'.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    # Redoc's menu footer always shows Redocly's logo from their CDN; the policy allows that one
    # image, on this page only (the referrer policy, same-origin, sends it no referrer).
    path(
        "api/redoc/",
        csp_update({"img-src": ["https://cdn.redoc.ly/redoc/logo-mini.svg"]})(
            SpectacularRedocView.as_view(url_name="schema")
        ),
        name="api-redoc",
    ),
    path("health/", HealthCheckView.as_view(checks=health_checks), name="health"),
    path("metrics", metrics_view, name="metrics"),  # Prometheus' default path, no slash
    path("i18n/", include("django.conf.urls.i18n")),
]


def permission_denied(request, exception=None):
    """A refused page in the back office's frame (the admin's context: header, user tools), 403."""
    from django.shortcuts import render

    return render(request, "403.html", admin.site.each_context(request), status=403)


handler403 = permission_denied
