"""API conventions shared by every app: permissions by role, pagination, errors.

Errors follow ``api.md``: 400 with field names, 401/403 with ``detail``, 409 for conflicts, never a
500 for bad input. Services raise Django's ``ValidationError`` (with field names) and
``PermissionDenied``; this handler turns them into DRF's usual bodies so the same rule reads the
same from the API, the admin and a management command.
"""

from __future__ import annotations

import datetime

import django_filters
from django import forms
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django_filters.fields import IsoDateTimeField
from rest_framework import exceptions, pagination, permissions, throttling
from rest_framework.fields import get_error_detail


def exception_handler(exc, context):
    # Imported here: rest_framework.views reads the API settings, which name this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, DjangoValidationError):
        detail = get_error_detail(exc)
        if not isinstance(detail, dict):
            detail = {"non_field_errors": detail}
        exc = exceptions.ValidationError(detail=detail)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(detail=str(exc) or None)
    return drf_exception_handler(exc, context)


class _UTCIsoDateTimeField(IsoDateTimeField):
    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(datetime.UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+08:00 is in year 0 in UTC
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None


class IsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """django-filter's ISO 8601 filter, with the value turned into UTC before it reaches the query.

    As given, ``?created_before=2026-01-01T00:00:00+19:52`` was a 500 on PostgreSQL (offsets beyond
    ±15:59 are refused) and ``0001-01-01T00:00:00`` a 500 on SQLite (no year 0 in UTC); now the
    first works and the second is a 400 like any other invalid date-time.
    """

    field_class = _UTCIsoDateTimeField


class _FailOpen:
    """A throttle whose counters live in the cache lets the request through when the cache cannot be
    reached (Redis restarting), and says so in the log: a consent withdrawal or an intake must not
    fail because a rate limiter's counter is unavailable (``make chaos`` saw them answer 500)."""

    def allow_request(self, request, view) -> bool:
        from redis.exceptions import RedisError

        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            import structlog

            structlog.get_logger(__name__).warning("throttle_unavailable", scope=self.scope, error=str(exc)[:200])
            return True


class UserRateThrottle(_FailOpen, throttling.UserRateThrottle):
    pass


class AnonRateThrottle(_FailOpen, throttling.AnonRateThrottle):
    pass


class Pagination(pagination.CursorPagination):
    """Keyset pagination (``?cursor=``) on an indexed creation time: cheap at any depth."""

    ordering = ("-created_at", "-pk")
    page_size_query_param = "page_size"
    max_page_size = 500


class InARole(permissions.BasePermission):
    """Signed in and holding a role (or a superuser): the API's schema and docs are for the people
    and systems that use the API, not for every account."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and (user.is_superuser or user.groups.exists()))


class RolePermission(permissions.BasePermission):
    """Every endpoint needs an authenticated user holding the permission of the action.

    A view declares ``permission_map = {"action": "app.codename", ...}``; actions it does not list
    fall back to Django's model permissions (view / add / change / delete on ``queryset.model``).
    """

    default_actions = {
        "list": "view",
        "retrieve": "view",
        "create": "add",
        "update": "change",
        "partial_update": "change",
        "destroy": "delete",
    }

    def required_permission(self, view) -> str | None:
        action = getattr(view, "action", None)
        explicit = getattr(view, "permission_map", {})
        if action in explicit:
            return explicit[action]
        verb = self.default_actions.get(action or "")
        queryset = getattr(view, "queryset", None)
        if verb is None or queryset is None:
            return None
        meta = queryset.model._meta
        return f"{meta.app_label}.{verb}_{meta.model_name}"

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if getattr(view, "action", None) == "metadata" or request.method == "OPTIONS":
            return True
        if getattr(view, request.method.lower(), None) is None:
            return True  # no such handler: let DRF answer 405 rather than a misleading 403
        perm = self.required_permission(view)
        if perm is None:
            # An endpoint that forgot to declare its permission is closed, not open.
            return False
        return user.has_perm(perm)


# --- the error answers in the schema ----------------------------------------------------------
_ERROR_SCHEMAS = {
    "ErrorDetail": {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
        "description": "401, 403, 404, 409: what went wrong.",
    },
    "ValidationErrors": {
        "type": "object",
        "additionalProperties": {},
        "description": 'DRF\'s 400 body: `{"field": ["message", ...], "non_field_errors": [...]}`, nested '
        'like the request (or `{"detail": "..."}` for a body that is not valid JSON).',
    },
}


def _error(description: str, component: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}},
    }


def document_error_responses(result, generator, request, public):
    """drf-spectacular post-processing hook: add api.md's error answers to every operation.

    drf-spectacular documents only the success responses of a view; the errors come from the
    conventions above (and from ``exception_handler``), so they are added here, where an operation
    can produce them: 401/403 wherever a user is required, 400 for anything that takes a body or
    filters, 404 for a path with an object in it and for a bad ``?cursor=``. Responses an
    operation documents itself are kept as they are.
    """
    result.setdefault("components", {}).setdefault("schemas", {}).update(_ERROR_SCHEMAS)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            query = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
            errors = {}
            if method != "get" or query - {"cursor", "page_size"}:
                errors["400"] = _error("Invalid input (the body names the fields).", "ValidationErrors")
            if operation.get("security"):
                errors["401"] = _error("Not authenticated.", "ErrorDetail")
                errors["403"] = _error("Not allowed (role, or four-eyes).", "ErrorDetail")
            if "{" in path or "cursor" in query:
                errors["404"] = _error("No such object, or an invalid cursor.", "ErrorDetail")
                if "{" in path:  # a value the route's pattern refuses never reaches DRF
                    errors["404"]["description"] += " A path that matches no route gets Django's HTML page."
                    errors["404"]["content"]["text/html"] = {"schema": {"type": "string"}}
            responses = operation.setdefault("responses", {})
            for code, response in errors.items():
                responses.setdefault(code, response)
    return result
