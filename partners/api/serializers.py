from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from partners import terms
from partners.models import Contract, Partner


class PartnerSerializer(serializers.ModelSerializer):
    """A partner on the list. ``api_secret`` is write-only and never returned."""

    api_secret = serializers.CharField(
        write_only=True, required=True, trim_whitespace=False, min_length=8, max_length=256
    )
    status = serializers.ChoiceField(choices=Partner.Status.choices, required=False, default=Partner.Status.ONBOARDING)
    weak_phone_hash = serializers.BooleanField(read_only=True)

    class Meta:
        model = Partner
        fields = [
            "code", "name", "license_type", "credit_code", "contact_email", "contact_phone", "status",
            "api_base_url", "api_secret", "phone_hash", "weak_phone_hash", "timeout_ms",
            "max_requests_per_second", "connector", "pia_reference", "pia_completed_on",
            "api_secret_changed_at", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["api_secret_changed_at", "created_at", "updated_at"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance is not None:
            # On PATCH the code is the identity and the secret is optional (omit to keep it).
            self.fields["code"].read_only = True
            self.fields["api_secret"].required = False


class ContractSerializer(serializers.ModelSerializer):
    """One contract version with its terms."""

    partner = serializers.SlugRelatedField(slug_field="code", queryset=Partner.objects.all())
    eligibility = terms.EligibilitySerializer()
    data_fields = terms.DataFieldsField()
    fees = terms.FeesSerializer()
    clawback = terms.ClawbackSerializer()
    reclaim = terms.ReclaimSerializer()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    last_edited_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    submitted_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    terminated_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = Contract
        fields = [
            "id", "partner", "version", "status", "effective_from", "effective_to", "priority",
            "eligibility", "data_fields", "daily_cap", "monthly_cap", "dedupe_days", "fees",
            "clawback", "reclaim", "created_by", "last_edited_by", "submitted_by", "submitted_at",
            "approved_by", "approved_at", "rejection_reason", "terminated_by", "terminated_at",
            "termination_reason", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = [
            "version", "status", "submitted_at", "approved_at", "rejection_reason", "terminated_at",
            "termination_reason", "created_at", "updated_at",
        ]  # fmt: skip

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance is not None:
            self.fields["partner"].read_only = True

    def validate(self, attrs):
        start = attrs.get("effective_from", getattr(self.instance, "effective_from", None))
        end = attrs.get("effective_to", getattr(self.instance, "effective_to", None))
        if start and end and end < start:
            raise serializers.ValidationError({"effective_to": [_("Must not be before effective_from.")]})
        return attrs

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        # Store nested terms in their canonical JSON form (money "30.00", rates "0.2500").
        for name, serializer_class in terms.TERM_SERIALIZERS.items():
            if name in value:
                value[name] = dict(serializer_class(value[name]).data)
        return value


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, allow_blank=False, trim_whitespace=True)


class OptionalReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
