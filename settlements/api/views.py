"""Settlement runs and statements (finance; auditors read and export)."""

from __future__ import annotations

from types import SimpleNamespace

from django.http import HttpResponse
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from config.api import Pagination
from settlements import exports
from settlements.api.serializers import (
    ReconcileUploadSerializer,
    ReconciliationSerializer,
    RunCreateSerializer,
    RunSerializer,
    StatementDetailSerializer,
    StatementNoteSerializer,
    StatementReasonSerializer,
    StatementSerializer,
)
from settlements.filtersets import SettlementRunFilterSet, StatementFilterSet
from settlements.models import Reconciliation, SettlementRun, Statement
from settlements.services import statements as svc
from settlements.services.reconcile import MAX_BYTES, statement_reconcile
from settlements.services.runs import run_start


class RunViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Settlement runs: ``POST`` a period to compute every partner's statement in a worker."""

    queryset = SettlementRun.objects.select_related("started_by").order_by("-created_at")
    serializer_class = RunSerializer
    filterset_class = SettlementRunFilterSet
    permission_map = {"create": "settlements.run_settlement"}

    @extend_schema(request=RunCreateSerializer, responses={202: RunSerializer})
    def create(self, request, *args, **kwargs):
        """Start a run for a month (Asia/Shanghai); poll the run for ``progress`` (0–1)."""
        serializer = RunCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        run = run_start(period=serializer.validated_data["period"], user=request.user)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class StatementPagination(Pagination):
    ordering = ("-period", "partner_id")


class FormatIsOurs(DefaultContentNegotiation):
    """``?format=`` chooses the export's file format here, not DRF's renderer."""

    settings = SimpleNamespace(URL_FORMAT_OVERRIDE=None)


class StatementViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Monthly statements per partner: ``draft → under_review → approved → issued → paid`` (and
    ``disputed``). Whoever ran or submitted a statement cannot approve it."""

    queryset = Statement.objects.select_related("partner", "computed_by", "submitted_by", "approved_by").order_by(
        "-period", "partner__code"
    )
    filterset_class = StatementFilterSet
    pagination_class = StatementPagination
    content_negotiation_class = FormatIsOurs
    permission_map = {
        "submit": "settlements.submit_statement",
        "approve": "settlements.approve_statement",
        "send_back": "settlements.approve_statement",
        "issue": "settlements.issue_statement",
        "pay": "settlements.issue_statement",
        "dispute": "settlements.issue_statement",
        "resolve": "settlements.issue_statement",
        "reconcile": "settlements.reconcile_statement",
        "reconciliations": "settlements.view_reconciliation",
        "export": "settlements.export_statement",
    }

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action not in ("list", "export"):  # an export streams its lines itself
            queryset = queryset.prefetch_related("lines__loan", "transitions__by")
        return queryset

    def get_serializer_class(self):
        return StatementSerializer if self.action == "list" else StatementDetailSerializer

    def _answer(self, statement: Statement) -> Response:
        return Response(StatementDetailSerializer(self.get_queryset().get(pk=statement.pk)).data)

    @extend_schema(request=None, responses=StatementDetailSerializer)
    @action(detail=True, methods=["post"])
    def submit(self, request, pk=None):
        """Draft → under review."""
        return self._answer(svc.statement_submit(statement=self.get_object(), user=request.user))

    @extend_schema(request=StatementNoteSerializer, responses=StatementDetailSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        """Under review → approved (four-eyes). A note is required when the last reconciliation
        left differences."""
        data = StatementNoteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = svc.statement_approve(
            statement=self.get_object(), user=request.user, note=data.validated_data["note"]
        )
        return self._answer(statement)

    @extend_schema(request=StatementReasonSerializer, responses=StatementDetailSerializer)
    @action(detail=True, methods=["post"], url_path="send-back")
    def send_back(self, request, pk=None):
        """Under review → draft, with what must be corrected."""
        data = StatementReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = svc.statement_send_back(
            statement=self.get_object(), user=request.user, reason=data.validated_data["reason"]
        )
        return self._answer(statement)

    @extend_schema(request=None, responses=StatementDetailSerializer)
    @action(detail=True, methods=["post"])
    def issue(self, request, pk=None):
        """Approved → issued (sent to the partner)."""
        return self._answer(svc.statement_issue(statement=self.get_object(), user=request.user))

    @extend_schema(request=StatementNoteSerializer, responses=StatementDetailSerializer)
    @action(detail=True, methods=["post"])
    def pay(self, request, pk=None):
        """Issued → paid."""
        data = StatementNoteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = svc.statement_mark_paid(
            statement=self.get_object(), user=request.user, note=data.validated_data["note"]
        )
        return self._answer(statement)

    @extend_schema(request=StatementReasonSerializer, responses=StatementDetailSerializer)
    @action(detail=True, methods=["post"])
    def dispute(self, request, pk=None):
        """The partner disputes the statement (under review, approved or issued)."""
        data = StatementReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = svc.statement_dispute(
            statement=self.get_object(), user=request.user, reason=data.validated_data["reason"]
        )
        return self._answer(statement)

    @extend_schema(request=StatementNoteSerializer, responses=StatementDetailSerializer)
    @action(detail=True, methods=["post"])
    def resolve(self, request, pk=None):
        """End a dispute: back to approved/issued unchanged, or to draft if never approved."""
        data = StatementNoteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        statement = svc.statement_resolve(
            statement=self.get_object(), user=request.user, note=data.validated_data["note"]
        )
        return self._answer(statement)

    @extend_schema(
        request={"multipart/form-data": ReconcileUploadSerializer}, responses={201: ReconciliationSerializer}
    )
    @action(detail=True, methods=["post"], parser_classes=[MultiPartParser], pagination_class=None)
    def reconcile(self, request, pk=None):
        """Upload the partner's figures (CSV ``referral_id,line_type,amount``): the answer lists
        the lines only we have, only they have, and those whose amounts differ."""
        statement = self.get_object()
        data = ReconcileUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        if upload.size > MAX_BYTES:
            raise ValidationError({"file": [_("The file is larger than 20 MB.")]})
        reconciliation = statement_reconcile(
            statement=statement, user=request.user, content=upload.read(), filename=upload.name
        )
        reconciliation = Reconciliation.objects.prefetch_related("items").get(pk=reconciliation.pk)
        return Response(ReconciliationSerializer(reconciliation).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=ReconciliationSerializer(many=True))
    @reconcile.mapping.get
    def reconciliations(self, request, pk=None):
        """The statement's reconciliations, newest first."""
        statement = self.get_object()
        rows = statement.reconciliations.select_related("uploaded_by").prefetch_related("items")
        return Response(ReconciliationSerializer(rows, many=True).data)

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=list(exports.FORMATS), required=True)],
        responses={
            **{
                (200, media): OpenApiResponse(OpenApiTypes.BINARY, description=f"The statement as {fmt.upper()}")
                for fmt, media in exports.FORMATS.items()
            },
            503: OpenApiResponse(OpenApiTypes.OBJECT, description="PDF unavailable: Pango or a CJK font missing"),
        },
    )
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """The statement as CSV, XLSX or a PDF in Chinese."""
        fmt = request.query_params.get("format", "")
        if fmt not in exports.FORMATS:
            raise ValidationError(
                {"format": [_("Choose one of: %(formats)s.") % {"formats": ", ".join(exports.FORMATS)}]}
            )
        statement = self.get_object()
        try:
            content, filename = exports.export_statement(statement, fmt)
        except exports.ExportUnavailable as error:
            return Response({"detail": str(error)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        response = HttpResponse(content, content_type=exports.FORMATS[fmt])
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
