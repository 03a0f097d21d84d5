"""Admin plumbing shared by every app: forms that save through services, and error messages.

The admin only shows forms, tables and buttons: every save and every status change goes through
an app's services, so the rules read the same in the admin as in the API.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import NON_FIELD_ERRORS, ImproperlyConfigured, PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connections, models, transaction
from django.db.models.query import ModelIterable
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

EMPTY = "—"


# --- saving through services ----------------------------------------------------------------
class ServiceModelForm(forms.ModelForm):
    """A model form whose last validation step is the service that saves it.

    The stock admin can send a form back with errors only while validating it: once ``is_valid()``
    is true it saves and reports success. So the service — which holds the rules — runs as the
    final step of validation, in a savepoint inside the admin's own transaction (``changeform_view``
    is atomic). A ``ValidationError`` or ``PermissionDenied`` from the service rolls back to the
    savepoint and becomes a form error; on success the saved object waits in ``self.saved`` for
    ``ServiceAdminMixin.save_form``.
    """

    request = None  # set per request by ServiceAdminMixin.get_form
    saved = None

    def save_through_service(self, *, actor, data: dict[str, Any]) -> models.Model:
        raise NotImplementedError

    def _post_clean(self) -> None:
        super()._post_clean()
        if self._errors:
            return
        if self.request is None:
            raise ImproperlyConfigured(f"{type(self).__name__} needs the request (use ServiceAdminMixin).")
        if not self.instance._state.adding and not self.has_changed():
            self.saved = type(self.instance)._default_manager.get(pk=self.instance.pk)
            return
        try:
            with transaction.atomic():
                self.saved = self.save_through_service(actor=self.request.user, data=dict(self.cleaned_data))
        except ValidationError as exc:
            self._add_service_error(exc)
        except PermissionDenied as exc:
            self.add_error(None, str(exc) or _("You do not have permission to do this."))

    def _add_service_error(self, exc: ValidationError) -> None:
        if not hasattr(exc, "error_dict"):
            self.add_error(None, exc)
            return
        for field, errors in exc.error_dict.items():
            if field in self.fields:
                self.add_error(field, errors)
            elif field == NON_FIELD_ERRORS:
                self.add_error(None, errors)
            else:  # a rule about a field not on this form (e.g. the status, shown read-only)
                self.add_error(None, [f"{field}: {message}" for message in ValidationError(errors).messages])


class ServiceAdminMixin:
    """Admin plumbing for ``ServiceModelForm``: hand it the request, never write the model here."""

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        form.request = request  # get_form builds a new class on every call, so nothing leaks between requests
        return form

    def save_form(self, request, form, change):
        return form.saved

    def save_model(self, request, obj, form, change):
        """Nothing to write: the form's service call already saved ``obj`` (see ServiceModelForm)."""

    def save_related(self, request, form, formsets, change):
        """No many-to-many fields and no inlines."""

    # Partners and contract versions are records of who agreed to what: they are offboarded or
    # terminated, never deleted.
    def has_delete_permission(self, request, obj=None):
        return False

    # simple_history's "revert" saves an old version with the model form, past the state machine
    # and four-eyes rules; history is for reading here (an approved contract changes by a new draft).
    def revert_disabled(self, request, obj=None):
        return True

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        if request.method == "POST":
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)


def error_text(exc: ValidationError | PermissionDenied) -> str:
    """One line for a message: ``field: message`` for each error a service raised."""
    if isinstance(exc, PermissionDenied):
        return str(exc) or str(_("You do not have permission to do this."))
    if hasattr(exc, "error_dict"):
        return " ".join(
            message if field == NON_FIELD_ERRORS else f"{field}: {message}"
            for field, errors in exc.error_dict.items()
            for message in ValidationError(errors).messages
        )
    return " ".join(exc.messages)


# --- counting big tables --------------------------------------------------------------------------
class BoundedCountPaginator(Paginator):
    """Counts at most ``cap`` rows (``COUNT(*)`` over a ``LIMIT`` subquery), so a page costs the same
    at a thousand rows as at fifty million. Past the cap ``capped`` is set and the count stops at
    ``cap`` (the changelist shows "10000+")."""

    cap = 10_000
    capped = False
    estimated = False  # True when ``count`` is the database's estimate rather than a count

    def bounded_count(self) -> int:
        counted = self.object_list.order_by()[: self.cap + 1].count()
        self.capped = counted > self.cap
        return min(counted, self.cap)

    @cached_property
    def count(self) -> int:
        if not isinstance(self.object_list, models.QuerySet):
            return super().count
        return self.bounded_count()

    @cached_property
    def estimated_total(self) -> int | None:
        return self.count if self.estimated else None

    # --- deep pages: the keys first, then their rows (a "deferred join") -------------------------
    # ``OFFSET n`` makes the database build and throw away n whole rows, each with the page's
    # joins. From this offset on a page first takes only the primary keys of its rows (same
    # filters, same ordering: often an index-only scan), then the rows for those keys. That costs
    # one query more, so first pages keep the plain slice.
    deferred_join_offset = 500

    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        if bottom >= self.deferred_join_offset and self.can_defer_join(self.object_list):
            object_list = self.rows_by_keys(self.object_list, bottom, top)
        else:
            object_list = self.object_list[bottom:top]
        return self._get_page(object_list, number, self)

    @staticmethod
    def can_defer_join(queryset) -> bool:
        """Model rows of a plain query. Not a list, a ``values()`` list, a ``union()``, a
        ``distinct()`` (its keys would not be its rows), an already sliced query, or one with a
        window function (filtering on the keys would change what it computes)."""
        if not isinstance(queryset, models.QuerySet) or queryset._iterable_class is not ModelIterable:
            return False
        query = queryset.query
        return queryset.model._meta.pk is not None and not (
            query.combinator
            or query.distinct
            or query.is_sliced
            or any(getattr(annotation, "contains_over_clause", False) for annotation in query.annotations.values())
        )

    @staticmethod
    def rows_by_keys(queryset: models.QuerySet, bottom: int, top: int) -> models.QuerySet:
        """Rows ``bottom``–``top`` of ``queryset``: their keys in one query, the rows (with
        ``select_related`` and ``prefetch_related``) when the page is read.

        The rows keep the queryset's ordering, which puts them in the keys' order: the changelist
        always orders on something unique (Django adds ``-pk`` to any other ordering), so the
        same ordering over a subset of the rows keeps their relative order.
        """
        keys = list(queryset.select_related(None).prefetch_related(None).values_list("pk", flat=True)[bottom:top])
        return queryset.filter(pk__in=keys)


class EstimatedCountPaginator(BoundedCountPaginator):
    """The changelists' paginator: never a ``COUNT(*)`` over a whole table (perf-notes.md).

    On PostgreSQL an unfiltered list takes the planner's row estimate for the table (``reltuples``,
    0.1 ms at any size) once it is at least ``cap`` rows — below that statistics may be stale or
    missing, so the rows are counted exactly, which is cheap there. A filtered list is counted up to
    ``cap`` rows; past that, the planner's estimate for the filtered query (``EXPLAIN``) is used if it
    is larger, else the count stops at the cap. Elsewhere (SQLite) the count is bounded. Estimated
    counts read "about N" on the changelist, capped ones "N+"; every page stays reachable either way.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, models.QuerySet):
            return super().count
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return self.bounded_count()
        if self._whole_table(queryset):
            estimate = self._table_estimate(queryset, connection)
            if estimate >= self.cap:
                self.estimated = True
                return estimate
        counted = self.bounded_count()
        if not self.capped:
            return counted
        estimate = self._plan_estimate(queryset, connection)
        if estimate > self.cap:
            self.capped, self.estimated = False, True
            return estimate
        return counted

    @staticmethod
    def _whole_table(queryset: models.QuerySet) -> bool:
        query = queryset.query
        return not (query.where or query.distinct or query.is_sliced or query.combinator)

    @staticmethod
    def _table_estimate(queryset: models.QuerySet, connection) -> int:
        table = connection.ops.quote_name(queryset.model._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", [table])
            row = cursor.fetchone()
        return row[0] if row and row[0] is not None else -1  # -1: never analysed

    @staticmethod
    def _plan_estimate(queryset: models.QuerySet, connection) -> int:
        sql, params = queryset.order_by().query.get_compiler(connection=connection).as_sql()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str | bytes):
            plan = json.loads(plan)
        return int(plan[0]["Plan"]["Plan Rows"])


class LargeTableAdminMixin:
    """Every changelist of the project: counts that never scan a whole table, and no second count
    of the unfiltered table for "X of Y selected"."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False


class ReadOnlyAdmin(LargeTableAdminMixin, admin.ModelAdmin):
    """What happened, as recorded: written by workers and callbacks, never edited here."""

    actions = ()
    list_per_page = 50
    change_list_template = "admin/referrals/operations/change_list.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
