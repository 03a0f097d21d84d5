"""Filters shared by the API and the admin."""

from __future__ import annotations

import django_filters

from config.api import IsoDateTimeFilter
from referrals.models import Applicant, Consent, Loan, Reclaim, Referral


class ApplicantFilterSet(django_filters.FilterSet):
    external_id = django_filters.CharFilter()
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Applicant
        fields = ["external_id", "province", "credit_grade"]


class ConsentFilterSet(django_filters.FilterSet):
    partner = django_filters.CharFilter(field_name="recipients__partner__code", distinct=True)
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Consent
        fields = ["status", "channel", "partner"]


class ReferralFilterSet(django_filters.FilterSet):
    partner = django_filters.CharFilter(field_name="partner__code")
    applicant = django_filters.UUIDFilter(field_name="applicant_id")
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Referral
        fields = ["status", "partner", "applicant"]


class LoanFilterSet(django_filters.FilterSet):
    partner = django_filters.CharFilter(field_name="partner__code")
    referral = django_filters.UUIDFilter(field_name="referral_id")

    class Meta:
        model = Loan
        fields = ["status", "partner", "referral"]


class ReclaimFilterSet(django_filters.FilterSet):
    partner = django_filters.CharFilter(field_name="partner__code")
    created_after = IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Reclaim
        fields = ["status", "partner"]
