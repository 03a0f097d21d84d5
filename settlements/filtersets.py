"""Filters shared by the API and the admin."""

from __future__ import annotations

import django_filters

from settlements.models import SettlementRun, Statement


class StatementFilterSet(django_filters.FilterSet):
    partner = django_filters.CharFilter(field_name="partner__code")

    class Meta:
        model = Statement
        fields = ["period", "partner", "status"]


class SettlementRunFilterSet(django_filters.FilterSet):
    class Meta:
        model = SettlementRun
        fields = ["period", "status"]
