"""Contract terms: what a partner may receive, who qualifies, and what each referral earns.

The terms are stored as JSON on ``Contract`` and validated here, once, by these serializers —
the API uses them as nested serializers (so errors name the field, e.g.
``{"fees": {"vat_rate": [...]}}``) and ``Contract.clean()`` uses them for the admin.
Values are normalised on the way in: money as ``"30.00"``, rates as ``"0.2500"``.
"""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from config.regions import is_province

# Applicant fields a contract may ask for, and the consent category that must cover each
# (partner-protocol.md). Credit data (credit_grade, decline_reasons) is deliberately absent:
# it is used for routing and never sent to a partner.
FIELD_CATEGORIES: dict[str, str] = {
    "name": "identity",
    "national_id": "identity",
    "phone": "contact",
    "province": "location",
    "city": "location",
    "requested_amount": "loan_request",
    "requested_term_months": "loan_request",
    "expected_apr": "loan_request",
    "monthly_income": "income",
}
DATA_FIELDS = tuple(FIELD_CATEGORIES)
CREDIT_GRADES = ("A", "B", "C", "D", "E")
MONEY = {"max_digits": 14, "decimal_places": 2, "min_value": Decimal("0.00")}
RATE = {"max_digits": 5, "decimal_places": 4, "min_value": Decimal("0"), "max_value": Decimal("1")}


class ProvinceCodeField(serializers.CharField):
    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not is_province(value):
            raise serializers.ValidationError(_("“%(code)s” is not a GB/T 2260 province code.") % {"code": value})
        return value


class EligibilitySerializer(serializers.Serializer):
    """Who the partner wants. Empty lists and null bounds mean “any”."""

    min_amount = serializers.DecimalField(**MONEY, required=False, allow_null=True, default=None)
    max_amount = serializers.DecimalField(**MONEY, required=False, allow_null=True, default=None)
    terms_months = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=120), required=False, default=list
    )
    provinces = serializers.ListField(child=ProvinceCodeField(), required=False, default=list)
    min_age = serializers.IntegerField(min_value=18, max_value=100, required=False, allow_null=True, default=None)
    max_age = serializers.IntegerField(min_value=18, max_value=100, required=False, allow_null=True, default=None)
    credit_grades = serializers.ListField(
        child=serializers.ChoiceField(choices=CREDIT_GRADES), required=False, default=list
    )
    decline_reasons = serializers.ListField(
        child=serializers.RegexField(r"^[A-Z][A-Z0-9_]{1,39}$"), required=False, default=list
    )

    def validate(self, attrs):
        errors = {}
        lo, hi = attrs.get("min_amount"), attrs.get("max_amount")
        if lo is not None and hi is not None and lo > hi:
            errors["max_amount"] = [_("Must not be less than min_amount.")]
        lo, hi = attrs.get("min_age"), attrs.get("max_age")
        if lo is not None and hi is not None and lo > hi:
            errors["max_age"] = [_("Must not be less than min_age.")]
        if errors:
            raise serializers.ValidationError(errors)
        for key in ("terms_months", "provinces", "credit_grades", "decline_reasons"):
            attrs[key] = sorted(set(attrs.get(key, [])))
        return attrs


class FeeTierSerializer(serializers.Serializer):
    from_count = serializers.IntegerField(
        min_value=2, help_text="First application number (in the statement) this fee applies to."
    )
    fee = serializers.DecimalField(**MONEY)


class FeesSerializer(serializers.Serializer):
    """What the partner pays per referral (see settlement-rules.md)."""

    application_fee = serializers.DecimalField(**MONEY)
    application_fee_tiers = FeeTierSerializer(many=True, required=False, default=list)
    approval_fee = serializers.DecimalField(**MONEY, required=False, default=Decimal("0.00"))
    disbursement_rate = serializers.DecimalField(**RATE, required=False, default=Decimal("0"))
    interest_share_rate = serializers.DecimalField(**RATE, required=False, default=Decimal("0"))
    vat_rate = serializers.DecimalField(**RATE)

    def validate_application_fee_tiers(self, tiers):
        counts = [tier["from_count"] for tier in tiers]
        if len(set(counts)) != len(counts):
            raise serializers.ValidationError(_("Each tier needs a different from_count."))
        return sorted(tiers, key=lambda tier: tier["from_count"])


class ClawbackSerializer(serializers.Serializer):
    fpd_days = serializers.IntegerField(min_value=1, max_value=365)
    duplicate_return_hours = serializers.IntegerField(min_value=0, max_value=24 * 90)


class ReclaimSerializer(serializers.Serializer):
    allowed = serializers.BooleanField()
    min_ontime_installments = serializers.IntegerField(min_value=1, max_value=360, required=False, default=6)
    fee = serializers.DecimalField(**MONEY, required=False, default=Decimal("0.00"))
    non_solicit_days = serializers.IntegerField(min_value=0, max_value=3650, required=False, default=90)


class DataFieldsField(serializers.ListField):
    child = serializers.ChoiceField(choices=DATA_FIELDS)

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_empty", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        values = super().to_internal_value(data)
        # Keep the canonical order so versions compare cleanly.
        return [field for field in DATA_FIELDS if field in set(values)]


TERM_SERIALIZERS: dict[str, type[serializers.Serializer]] = {
    "eligibility": EligibilitySerializer,
    "fees": FeesSerializer,
    "clawback": ClawbackSerializer,
    "reclaim": ReclaimSerializer,
}


def normalise_terms(name: str, value) -> dict:
    """Validate one block of terms and return it in canonical JSON form.

    Raises Django's ``ValidationError`` keyed by the block name, so the admin and services report
    ``{"fees": {"vat_rate": [...]}}`` just like the API.
    """
    serializer = TERM_SERIALIZERS[name](data=value if value is not None else {})
    if not serializer.is_valid():
        raise DjangoValidationError({name: [_flatten(serializer.errors)]})
    return dict(serializer.__class__(serializer.validated_data).data)


def normalise_data_fields(value) -> list[str]:
    field = DataFieldsField()
    try:
        return field.run_validation(value)
    except serializers.ValidationError as exc:
        raise DjangoValidationError({"data_fields": [_flatten(exc.detail)]}) from exc


def _flatten(detail) -> str:
    """A one-line, field-named message for Django's ValidationError (admin forms)."""
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail if item)
    return str(detail)
