"""Filters shared by the API and the admin."""

from __future__ import annotations

import django_filters

from config.api import IsoDateTimeFilter
from partners.models import Contract, Partner


class PartnerFilterSet(django_filters.FilterSet):
    code = django_filters.CharFilter()
    name = django_filters.CharFilter(lookup_expr="icontains")
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Partner
        fields = ["code", "name", "status", "license_type", "phone_hash"]


class ContractFilterSet(django_filters.FilterSet):
    partner = django_filters.CharFilter(field_name="partner__code")
    effective_on = django_filters.DateFilter(method="filter_effective_on", label="Effective on (date)")
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Contract
        fields = ["partner", "status", "version"]

    def filter_effective_on(self, queryset, name, value):
        return queryset.filter(effective_from__lte=value).exclude(effective_to__lt=value)
