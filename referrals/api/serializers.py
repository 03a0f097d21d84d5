from __future__ import annotations

import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from partners.terms import CREDIT_GRADES
from referrals import validators
from referrals.models import Applicant, Consent, ConsentEvent, ConsentText, Loan, Reclaim, Referral
from referrals.models.consent import DATA_CATEGORIES, PURPOSES, TEXT_CODE_VALIDATOR

HEX64 = r"^[0-9a-fA-F]{64}$"


def _django_check(func, *args):
    try:
        return func(*args)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from exc


def _not_in_future(value: datetime.datetime) -> datetime.datetime:
    if value > timezone.now() + datetime.timedelta(seconds=settings.SPILLWAY_CLOCK_SKEW_SECONDS):
        raise serializers.ValidationError(_("Must not be in the future."))
    return value


class ConsentTextSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    code = serializers.CharField(max_length=64, validators=[TEXT_CODE_VALIDATOR])
    language = serializers.ChoiceField(choices=[code for code, _name in settings.LANGUAGES], default="zh-hans")
    validity_days = serializers.IntegerField(min_value=1, max_value=3650)

    class Meta:
        model = ConsentText
        fields = ["code", "language", "body", "sha256", "validity_days", "created_by", "created_at"]
        read_only_fields = ["sha256", "created_at"]

    def validate_code(self, value):
        if ConsentText.objects.filter(code=value).exists():
            raise serializers.ValidationError(
                _("A consent text with this code exists; texts are immutable, use a new code.")
            )
        return value


class ConsentGrantSerializer(serializers.Serializer):
    """The consent as the origination system recorded it (api.md). Looks up texts and partners in
    the ``lookups`` passed in the context, so a batch of 1,000 costs two queries, not 2,000."""

    text_code = serializers.CharField(max_length=64)
    text_sha256 = serializers.RegexField(HEX64)
    partners = serializers.ListField(child=serializers.CharField(max_length=32), allow_empty=False)
    data_categories = serializers.ListField(child=serializers.ChoiceField(choices=DATA_CATEGORIES), allow_empty=False)
    purposes = serializers.ListField(child=serializers.ChoiceField(choices=PURPOSES), allow_empty=False)
    channel = serializers.ChoiceField(choices=Consent.Channel.choices)
    granted_at = serializers.DateTimeField(validators=[_not_in_future])
    ip = serializers.IPAddressField()
    device_id = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    evidence_sha256 = serializers.RegexField(HEX64)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_purposes(self, value):
        if "loan_referral" not in value:
            raise serializers.ValidationError(_("Must include loan_referral."))
        return sorted(set(value))

    def validate_data_categories(self, value):
        return sorted(set(value))

    def validate_partners(self, value):
        known = self.context["lookups"].partners
        unknown = sorted({code for code in value if code not in known})
        if unknown:
            raise serializers.ValidationError(_("Unknown partner(s): %(codes)s.") % {"codes": ", ".join(unknown)})
        return sorted(set(value))

    def validate(self, attrs):
        errors = {}
        text = self.context["lookups"].texts.get(attrs["text_code"])
        if text is None:
            errors["text_code"] = [_("No consent text with this code.")]
        elif attrs["text_sha256"].lower() != text.sha256:
            errors["text_sha256"] = [
                _("Does not match the SHA-256 of the consent text %(code)s.") % {"code": text.code}
            ]
        if text is not None and attrs.get("expires_at") is None:
            attrs["expires_at"] = attrs["granted_at"] + datetime.timedelta(days=text.validity_days)
        expires = attrs.get("expires_at")
        if expires is not None and expires <= attrs["granted_at"]:
            errors["expires_at"] = [_("Must be after granted_at.")]
        elif expires is not None and expires <= timezone.now():
            errors["expires_at"] = [_("This consent has already expired.")]
        if errors:
            raise serializers.ValidationError(errors)
        attrs["text"] = text
        attrs["partner_rows"] = {code: self.context["lookups"].partners[code] for code in attrs["partners"]}
        attrs["text_sha256"] = attrs["text_sha256"].lower()
        attrs["evidence_sha256"] = attrs["evidence_sha256"].lower()
        return attrs


class ApplicantIntakeSerializer(serializers.Serializer):
    """One declined applicant with their consent, as pushed by the origination system."""

    external_id = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", max_length=64)
    name = serializers.CharField(max_length=64)
    national_id = serializers.CharField(max_length=18)
    phone = serializers.CharField(max_length=11)
    province = serializers.CharField(max_length=6)
    city = serializers.CharField(max_length=6, required=False, allow_blank=True, default="")
    requested_amount = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=Decimal("0.01"))
    requested_term_months = serializers.IntegerField(min_value=1, max_value=360)
    expected_apr = serializers.DecimalField(
        max_digits=6, decimal_places=4, min_value=Decimal("0"), max_value=Decimal("1"), required=False, allow_null=True
    )
    monthly_income = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=Decimal("0"), required=False, allow_null=True
    )
    credit_grade = serializers.ChoiceField(choices=CREDIT_GRADES, required=False, allow_blank=True, default="")
    decline_reasons = serializers.ListField(child=serializers.RegexField(r"^[A-Z][A-Z0-9_]{1,39}$"), allow_empty=False)
    declined_at = serializers.DateTimeField(validators=[_not_in_future])
    consent = ConsentGrantSerializer()

    def validate_name(self, value):
        value = value.strip()
        if not value:
            raise serializers.ValidationError(_("This field may not be blank."))
        return value

    def validate_national_id(self, value):
        number = _django_check(validators.clean_national_id, value)
        birth = validators.birth_date_of(number)
        if validators.age_on(birth, timezone.localdate()) < validators.MIN_AGE:
            raise serializers.ValidationError(_("The applicant must be at least 18 years old."))
        return number

    def validate_phone(self, value):
        return _django_check(validators.clean_phone, value)

    def validate_province(self, value):
        return _django_check(validators.clean_province, value)

    def validate(self, attrs):
        if attrs.get("city"):
            try:
                validators.clean_city(attrs["city"], attrs["province"])
            except DjangoValidationError as exc:
                raise serializers.ValidationError({"city": exc.messages}) from exc
        return attrs


# --- responses ----------------------------------------------------------------------------------
class ConsentSummarySerializer(serializers.ModelSerializer):
    text_code = serializers.CharField(source="text.code", read_only=True)
    partners = serializers.SerializerMethodField()

    class Meta:
        model = Consent
        fields = [
            "id", "status", "text_code", "text_sha256", "partners", "data_categories", "purposes", "channel",
            "granted_at", "expires_at", "withdrawn_at", "expired_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_partners(self, consent) -> list[str]:
        return [recipient.partner.code for recipient in consent.recipients.all()]


class ReferralSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    partner = serializers.CharField()
    status = serializers.CharField()


class ApplicantSerializer(serializers.ModelSerializer):
    """An applicant as the API shows it: personal data masked."""

    name = serializers.CharField(source="name_masked", read_only=True)
    national_id = serializers.CharField(source="national_id_masked", read_only=True)
    phone = serializers.CharField(source="phone_masked", read_only=True)
    age = serializers.SerializerMethodField()
    consent = serializers.SerializerMethodField()
    referrals = serializers.SerializerMethodField()

    class Meta:
        model = Applicant
        fields = [
            "id", "external_id", "name", "national_id", "phone", "age", "province", "city", "requested_amount",
            "requested_term_months", "expected_apr", "monthly_income", "credit_grade", "decline_reasons",
            "declined_at", "created_at", "consent", "referrals",
        ]  # fmt: skip
        read_only_fields = fields

    def get_age(self, applicant) -> int:
        return applicant.age_on(timezone.localdate())

    def get_consent(self, applicant) -> dict | None:
        consents = list(applicant.consents.all())
        return ConsentSummarySerializer(consents[0]).data if consents else None

    def get_referrals(self, applicant) -> list[dict]:
        return ReferralSummarySerializer(
            [{"id": r.id, "partner": r.partner.code, "status": r.status} for r in applicant.referrals.all()], many=True
        ).data


class ConsentEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConsentEvent
        fields = ["seq", "type", "occurred_at", "payload", "prev_hash", "hash", "recorded_at"]
        read_only_fields = fields


class WithdrawSerializer(serializers.Serializer):
    withdrawn_at = serializers.DateTimeField(required=False, validators=[_not_in_future])
    channel = serializers.ChoiceField(choices=Consent.Channel.choices)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class WithdrawResultSerializer(serializers.Serializer):
    status = serializers.CharField()
    cancelled_referrals = serializers.ListField(child=serializers.UUIDField())


class IntakeBatchSerializer(serializers.Serializer):
    items = serializers.ListField(child=serializers.DictField(), allow_empty=False, max_length=1000)


class IntakeBatchResultItemSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.IntegerField()
    id = serializers.UUIDField(required=False)
    errors = serializers.DictField(required=False)


class IntakeBatchResultSerializer(serializers.Serializer):
    results = IntakeBatchResultItemSerializer(many=True)


# --- referrals and loans ----------------------------------------------------------------------
class DispatchAttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    duration_ms = serializers.IntegerField()
    http_status = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField()
    error = serializers.CharField()


class DispatchSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    status = serializers.CharField()
    idempotency_key = serializers.CharField()
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField()
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    attempt_rows = DispatchAttemptSerializer(many=True, source="attempt_rows.all")


class RoutingDecisionSerializer(serializers.Serializer):
    partner = serializers.CharField(source="partner.code")
    contract = serializers.IntegerField(source="contract_id", allow_null=True)
    outcome = serializers.CharField()
    reason = serializers.CharField()
    detail = serializers.CharField()


class ReferralSerializer(serializers.ModelSerializer):
    applicant = serializers.UUIDField(source="applicant_id", read_only=True)
    partner = serializers.CharField(source="partner.code", read_only=True)
    contract = serializers.IntegerField(source="contract_id", read_only=True)
    contract_version = serializers.IntegerField(source="contract.version", read_only=True)

    class Meta:
        model = Referral
        fields = [
            "id", "applicant", "partner", "contract", "contract_version", "status", "status_reason", "priority",
            "created_at", "probe_answered_at", "submitted_at", "accepted_at", "returned_at", "application_id",
        ]  # fmt: skip
        read_only_fields = fields


class ReferralDetailSerializer(ReferralSerializer):
    dispatches = DispatchSerializer(many=True, source="dispatches.all", read_only=True)
    routing = serializers.SerializerMethodField()

    class Meta(ReferralSerializer.Meta):
        fields = [*ReferralSerializer.Meta.fields, "dispatches", "routing"]
        read_only_fields = fields

    @extend_schema_field(RoutingDecisionSerializer(many=True))
    def get_routing(self, referral) -> list:
        decisions = referral.applicant.routing_decisions.select_related("partner").order_by("partner__code")
        return RoutingDecisionSerializer(decisions, many=True).data


class RepaymentSerializer(serializers.Serializer):
    installment = serializers.IntegerField()
    due_date = serializers.DateField()
    paid_date = serializers.DateField()
    principal = serializers.DecimalField(max_digits=14, decimal_places=2)
    interest = serializers.DecimalField(max_digits=14, decimal_places=2)


class LoanSerializer(serializers.ModelSerializer):
    partner = serializers.CharField(source="partner.code", read_only=True)
    referral = serializers.UUIDField(source="referral_id", read_only=True)
    repayments = RepaymentSerializer(many=True, read_only=True)

    class Meta:
        model = Loan
        fields = [
            "id", "referral", "partner", "loan_id", "principal", "apr", "term_months", "status", "credit_limit",
            "first_due_date", "approved_at", "disbursed_at", "ended_at", "repayments",
        ]  # fmt: skip
        read_only_fields = fields


class BorrowerSerializer(serializers.Serializer):
    """The borrower of a reclaim: masked, or in clear for a caller allowed to receive it (recorded)."""

    applicant = serializers.UUIDField(source="id")
    external_id = serializers.CharField()
    name = serializers.SerializerMethodField()
    national_id = serializers.SerializerMethodField()
    phone = serializers.SerializerMethodField()
    masked = serializers.SerializerMethodField()

    def _clear(self) -> bool:
        return bool(self.context.get("reveal"))

    def get_name(self, applicant) -> str:
        return applicant.name if self._clear() else applicant.name_masked

    def get_national_id(self, applicant) -> str:
        return applicant.national_id if self._clear() else applicant.national_id_masked

    def get_phone(self, applicant) -> str:
        return applicant.phone if self._clear() else applicant.phone_masked

    def get_masked(self, applicant) -> bool:
        return not self._clear()


class ReclaimCaseSerializer(serializers.ModelSerializer):
    partner = serializers.CharField(source="partner.code", read_only=True)
    loan_id = serializers.CharField(source="loan.loan_id", read_only=True)
    borrower = serializers.SerializerMethodField()

    class Meta:
        model = Reclaim
        fields = [
            "id", "referral", "partner", "loan_id", "status", "status_reason", "effective_date", "created_at",
            "decided_at", "notified_at", "acknowledged_at", "reclaimed_at", "borrower", "evidence",
        ]  # fmt: skip
        read_only_fields = fields

    def get_borrower(self, reclaim) -> BorrowerSerializer:
        # In clear only for a borrower actually handed back, and only when the view recorded the read.
        reveal = reclaim.pk in self.context.get("reveal_ids", ())
        return BorrowerSerializer(reclaim.referral.applicant, context={**self.context, "reveal": reveal}).data


class ReclaimDecisionSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)


class ReclaimProposalSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class ReclaimScanSerializer(serializers.Serializer):
    task_id = serializers.CharField()
