from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from partners import selectors, services
from partners.api.serializers import ContractSerializer, OptionalReasonSerializer, PartnerSerializer, ReasonSerializer
from partners.filtersets import ContractFilterSet, PartnerFilterSet


class PartnerViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Partners on the approved list (partnership managers edit; everyone with access reads)."""

    queryset = selectors.partner_list()
    serializer_class = PartnerSerializer
    filterset_class = PartnerFilterSet
    lookup_field = "code"
    lookup_value_regex = "[A-Z0-9_]{2,32}"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def perform_create(self, serializer):
        serializer.instance = services.partner_create(actor=self.request.user, data=serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = services.partner_update(
            actor=self.request.user, partner=serializer.instance, data=serializer.validated_data
        )


class ContractViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Contract versions: drafted and submitted by partnership managers, approved by compliance."""

    queryset = selectors.contract_list()
    serializer_class = ContractSerializer
    filterset_class = ContractFilterSet
    http_method_names = ["get", "post", "patch", "head", "options"]
    permission_map = {
        "submit": "partners.submit_contract",
        "approve": "partners.approve_contract",
        "reject": "partners.approve_contract",
        "terminate": "partners.terminate_contract",
    }

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        partner = data.pop("partner")
        serializer.instance = services.contract_create(actor=self.request.user, partner=partner, data=data)

    def perform_update(self, serializer):
        serializer.instance = services.contract_update(
            actor=self.request.user, contract=serializer.instance, data=serializer.validated_data
        )

    def _respond(self, contract):
        contract = selectors.contract_list().get(pk=contract.pk)
        return Response(ContractSerializer(contract, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses=ContractSerializer)
    @action(detail=True, methods=["post"])
    def submit(self, request, pk=None):
        """draft → pending_approval."""
        return self._respond(services.contract_submit(actor=request.user, contract=self.get_object()))

    @extend_schema(request=None, responses=ContractSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        """pending_approval → active (403 for whoever created or last edited it)."""
        return self._respond(services.contract_approve(actor=request.user, contract=self.get_object()))

    @extend_schema(request=ReasonSerializer, responses=ContractSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        """pending_approval → draft, with a reason."""
        body = ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        contract = services.contract_reject(
            actor=request.user, contract=self.get_object(), reason=body.validated_data["reason"]
        )
        return self._respond(contract)

    @extend_schema(request=OptionalReasonSerializer, responses=ContractSerializer)
    @action(detail=True, methods=["post"])
    def terminate(self, request, pk=None):
        """active / superseded → terminated, at once (a reason is optional)."""
        body = OptionalReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        contract = services.contract_terminate(
            actor=request.user, contract=self.get_object(), reason=body.validated_data["reason"]
        )
        return self._respond(contract)

    def create(self, request, *args, **kwargs):
        response = super().create(request, *args, **kwargs)
        response.status_code = status.HTTP_201_CREATED
        return response
