from __future__ import annotations

from rest_framework import serializers

from settlements.models import (
    Reconciliation,
    ReconciliationItem,
    SettlementRun,
    Statement,
    StatementLine,
    StatementTransition,
)
from settlements.periods import PERIOD


class RunCreateSerializer(serializers.Serializer):
    period = serializers.RegexField(PERIOD, max_length=7, help_text="A calendar month, YYYY-MM (Asia/Shanghai).")


class RunSerializer(serializers.ModelSerializer):
    started_by = serializers.CharField(source="started_by.username", read_only=True)

    class Meta:
        model = SettlementRun
        fields = ["id", "period", "status", "progress", "started_by", "created_at", "finished_at", "error", "summary"]
        read_only_fields = fields


class LineSerializer(serializers.ModelSerializer):
    loan_id = serializers.CharField(source="loan.loan_id", read_only=True, allow_null=True, default=None)

    class Meta:
        model = StatementLine
        fields = [
            "id", "line_type", "amount", "referral", "loan", "loan_id", "event", "contract", "vat_rate",
            "occurred_at", "late", "basis",
        ]  # fmt: skip
        read_only_fields = fields


class TransitionSerializer(serializers.ModelSerializer):
    by = serializers.CharField(source="by.username", read_only=True)

    class Meta:
        model = StatementTransition
        fields = ["source", "target", "by", "at", "note"]
        read_only_fields = fields


class StatementSerializer(serializers.ModelSerializer):
    partner = serializers.CharField(source="partner.code", read_only=True)
    computed_by = serializers.CharField(source="computed_by.username", read_only=True)
    submitted_by = serializers.CharField(source="submitted_by.username", read_only=True, allow_null=True, default=None)
    approved_by = serializers.CharField(source="approved_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = Statement
        fields = [
            "id", "partner", "period", "status", "net", "vat", "gross", "line_count", "run", "computed_by",
            "computed_at", "submitted_by", "submitted_at", "approved_by", "approved_at", "approval_note",
            "issued_at", "paid_at",
        ]  # fmt: skip
        read_only_fields = fields


class StatementDetailSerializer(StatementSerializer):
    lines = LineSerializer(many=True, read_only=True)
    transitions = TransitionSerializer(many=True, read_only=True)

    class Meta(StatementSerializer.Meta):
        fields = [*StatementSerializer.Meta.fields, "lines", "transitions"]
        read_only_fields = fields


class StatementNoteSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class StatementReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)


class ReconcileUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV with the header referral_id,line_type,amount (UTF-8).")


class ReconciliationItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = ReconciliationItem
        fields = ["kind", "referral", "line_type", "ours", "theirs", "difference"]
        read_only_fields = fields


class ReconciliationSerializer(serializers.ModelSerializer):
    uploaded_by = serializers.CharField(source="uploaded_by.username", read_only=True)
    items = ReconciliationItemSerializer(many=True, read_only=True)

    class Meta:
        model = Reconciliation
        fields = [
            "id", "statement", "uploaded_by", "uploaded_at", "filename", "sha256", "row_count", "ours_total",
            "theirs_total", "only_ours", "only_theirs", "amounts_differ", "total_difference", "items",
        ]  # fmt: skip
        read_only_fields = fields
