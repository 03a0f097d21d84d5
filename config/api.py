"""API conventions shared by every app: permissions by role, pagination, errors.

Errors follow ``api.md``: 400 with field names, 401/403 with ``detail``, 409 for conflicts, never a
500 for bad input. Services raise Django's ``ValidationError`` (with field names) and
``PermissionDenied``; this handler turns them into DRF's usual bodies so the same rule reads the
same from the API, the admin and a management command.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, pagination, permissions, status
from rest_framework.fields import get_error_detail


class Conflict(exceptions.APIException):
    """409: the request conflicts with the current state (e.g. an idempotency key reused)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


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


class Pagination(pagination.CursorPagination):
    """Keyset pagination (``?cursor=``) on an indexed creation time: cheap at any depth."""

    ordering = ("-created_at", "-pk")
    page_size_query_param = "page_size"
    max_page_size = 500


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
