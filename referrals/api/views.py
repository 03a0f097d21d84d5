from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from referrals import selectors
from referrals.api.serializers import (
    ApplicantIntakeSerializer,
    ApplicantSerializer,
    ConsentEventSerializer,
    ConsentTextSerializer,
    IntakeBatchResultSerializer,
    IntakeBatchSerializer,
    LoanSerializer,
    ReclaimCaseSerializer,
    ReclaimDecisionSerializer,
    ReclaimProposalSerializer,
    ReclaimScanSerializer,
    ReferralDetailSerializer,
    ReferralSerializer,
    WithdrawResultSerializer,
    WithdrawSerializer,
)
from referrals.filtersets import ApplicantFilterSet, LoanFilterSet, ReclaimFilterSet, ReferralFilterSet
from referrals.models import Consent, ConsentText, Loan, Reclaim, Referral
from referrals.services import consents as consent_services
from referrals.services import reclaims as reclaim_services
from referrals.services.intake import MAX_BATCH, Lookups, applicant_intake
from referrals.services.operations import referral_retry


def _validator():
    """``validate(item, lookups)`` for one intake call, with one serializer for all its items.

    DRF deep-copies a serializer's declared fields for every new instance; for a batch of 1,000
    that copying cost more than the validation itself (profiled). ``run_validation`` is what
    ``is_valid`` calls, and its ``ValidationError.detail`` is what ``errors`` would be."""
    current: dict = {}

    def validate(item, lookups: Lookups):
        if not isinstance(item, dict):
            return None, {"non_field_errors": ["Each item must be a JSON object."]}
        if current.get("lookups") is not lookups:  # a retried intake looks things up again
            current["lookups"] = lookups
            current["serializer"] = ApplicantIntakeSerializer(context={"lookups": lookups})
        try:
            return current["serializer"].run_validation(item), {}
        except ValidationError as exc:
            return None, exc.detail

    return validate


class ConsentTextViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Consent wordings (compliance officers). Immutable once created."""

    queryset = ConsentText.objects.select_related("created_by")
    serializer_class = ConsentTextSerializer
    lookup_field = "code"
    lookup_value_regex = "[a-z0-9._-]+"
    filterset_fields = ["language"]

    def perform_create(self, serializer):
        serializer.instance = consent_services.consent_text_create(actor=self.request.user, **serializer.validated_data)


class ApplicantViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Declined applicants with their consent (intake by the origination system)."""

    queryset = selectors.applicant_list()
    serializer_class = ApplicantSerializer
    filterset_class = ApplicantFilterSet
    permission_map = {"create": "referrals.add_applicant", "batch": "referrals.add_applicant"}

    def _respond(self, applicant_id, code: int) -> Response:
        applicant = selectors.applicant_list().get(pk=applicant_id)
        return Response(ApplicantSerializer(applicant, context=self.get_serializer_context()).data, status=code)

    @extend_schema(
        request=ApplicantIntakeSerializer,
        responses={
            201: ApplicantSerializer,
            200: OpenApiResponse(ApplicantSerializer, description="The same body again (idempotent replay)."),
            409: OpenApiResponse(description="The external_id was already used with a different body."),
        },
    )
    def create(self, request, *args, **kwargs):
        """Take in one declined applicant with their consent."""
        [result] = applicant_intake(actor=request.user, items=[request.data], validate=_validator())
        if result.status in (200, 201):
            return self._respond(result.applicant.pk, result.status)
        return Response(result.errors, status=result.status)

    @extend_schema(request=IntakeBatchSerializer, responses=IntakeBatchResultSerializer)
    @action(detail=False, methods=["post"])
    def batch(self, request):
        """Up to 1,000 applicants; each is accepted (201/200) or rejected (400/409) on its own."""
        envelope = IntakeBatchSerializer(data=request.data)
        if not isinstance(request.data, dict) or not isinstance(request.data.get("items"), list):
            envelope.is_valid(raise_exception=True)
        if len(request.data["items"]) > MAX_BATCH:
            return Response({"items": [f"At most {MAX_BATCH} items per batch."]}, status=status.HTTP_400_BAD_REQUEST)
        if not request.data["items"]:
            return Response({"items": ["This list may not be empty."]}, status=status.HTTP_400_BAD_REQUEST)
        results = applicant_intake(actor=request.user, items=request.data["items"], validate=_validator())
        body = []
        for result in results:
            entry = {"index": result.index, "status": result.status}
            if result.applicant is not None:
                entry["id"] = str(result.applicant.pk)
            if result.errors:
                entry["errors"] = result.errors
            body.append(entry)
        return Response({"results": body}, status=status.HTTP_200_OK)


class ConsentViewSet(viewsets.GenericViewSet):
    """A consent's withdrawal and its ledger."""

    queryset = Consent.objects.all()
    serializer_class = WithdrawSerializer  # what OPTIONS describes; without it OPTIONS …/withdraw/ was a 500
    permission_map = {"withdraw": "referrals.withdraw_consent", "events": "referrals.view_consentevent"}

    @extend_schema(request=WithdrawSerializer, responses=WithdrawResultSerializer)
    @action(detail=True, methods=["post"])
    def withdraw(self, request, pk=None):
        """Withdraw the consent: from the moment this returns, nothing more is sent under it."""
        body = WithdrawSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = consent_services.consent_withdraw(
            actor=request.user,
            consent=self.get_object(),
            channel=body.validated_data["channel"],
            reason=body.validated_data["reason"],
            withdrawn_at=body.validated_data.get("withdrawn_at"),
        )
        return Response(
            {"status": result.consent.status, "cancelled_referrals": [str(r) for r in result.cancelled_referrals]}
        )

    @extend_schema(responses=ConsentEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)  # a plain list, and the schema says so
    def events(self, request, pk=None):
        """The consent's ledger events in order, with their hashes."""
        consent = self.get_object()
        return Response(ConsentEventSerializer(selectors.consent_events(consent), many=True).data)


class ReferralViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Referrals (operations watch the queues; compliance and finance read)."""

    queryset = Referral.objects.select_related("partner", "contract").order_by("-created_at")
    filterset_class = ReferralFilterSet
    permission_map = {"retry": "referrals.retry_referral"}

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.select_related("applicant").prefetch_related("dispatches__attempt_rows")
        return queryset

    def get_serializer_class(self):
        return ReferralDetailSerializer if self.action in ("retrieve", "retry") else ReferralSerializer

    @extend_schema(request=None, responses=ReferralDetailSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Put a failed referral back in the queue (its failed call is retried with the same key)."""
        referral = referral_retry(actor=request.user, referral=self.get_object())
        return Response(ReferralDetailSerializer(self.get_queryset().get(pk=referral.pk)).data)


class LoanViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Loans reported by partners, with their repayments."""

    queryset = Loan.objects.select_related("partner").prefetch_related("repayments").order_by("-created_at")
    serializer_class = LoanSerializer
    filterset_class = LoanFilterSet


class ReclaimViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Reclaims (回捞): compliance reviews candidates; origination picks up ``?status=reclaimed``.

    Borrowers' personal data is masked unless the caller may receive it in clear
    (``receive_reclaimed_pii``); each such read is recorded in the borrower's consent ledger."""

    queryset = Reclaim.objects.select_related("partner", "loan", "referral__applicant").order_by("created_at")
    serializer_class = ReclaimCaseSerializer
    filterset_class = ReclaimFilterSet
    permission_map = {
        "scan": "referrals.propose_reclaim",
        "propose": "referrals.propose_reclaim",
        "approve": "referrals.approve_reclaim",
        "reject": "referrals.approve_reclaim",
        "retry_notice": "referrals.propose_reclaim",
    }

    def get_queryset(self):
        """The hand-back reader (origination: receives reclaimed borrowers, reviews nothing) sees
        handed-back cases only; who a lender is merely considering is none of its business."""
        queryset = super().get_queryset()
        user = self.request.user
        reviews = user.has_perm("referrals.propose_reclaim") or user.has_perm("referrals.approve_reclaim")
        if user.has_perm("referrals.receive_reclaimed_pii") and not reviews:
            queryset = queryset.filter(status=Reclaim.Status.RECLAIMED)
        return queryset

    def _reveal(self) -> bool:
        return self.request.user.has_perm("referrals.receive_reclaimed_pii")

    def _revealed(self, reclaims: list[Reclaim]) -> set:
        """The reclaims whose borrower this caller receives in clear — handed-back ones only, and
        only with ``receive_reclaimed_pii`` — each read recorded in the borrower's consent ledger."""
        if not self.request.user.has_perm("referrals.receive_reclaimed_pii"):
            return set()
        handed_back = [r for r in reclaims if r.status == Reclaim.Status.RECLAIMED]
        if handed_back:
            reclaim_services.reclaims_reveal(actor=self.request.user, reclaims=handed_back)
        return {r.pk for r in handed_back}

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        context = {"request": request, "reveal_ids": self._revealed(page)}
        return self.get_paginated_response(ReclaimCaseSerializer(page, many=True, context=context).data)

    def retrieve(self, request, *args, **kwargs):
        return self._answer(self.get_object())

    def _answer(self, reclaim: Reclaim) -> Response:
        reclaim = self.get_queryset().get(pk=reclaim.pk)
        context = {"request": self.request, "reveal_ids": self._revealed([reclaim])}
        return Response(ReclaimCaseSerializer(reclaim, context=context).data)

    @extend_schema(request=None, responses=ReclaimCaseSerializer)
    @action(detail=True, methods=["post"], url_path="retry-notice")
    def retry_notice(self, request, pk=None):
        """Send a notice whose retries ran out again (same idempotency key; the rules are checked
        again before it leaves)."""
        return self._answer(reclaim_services.reclaim_retry_notice(actor=request.user, reclaim=self.get_object()))

    @extend_schema(request=None, responses={202: ReclaimScanSerializer})
    @action(detail=False, methods=["post"])
    def scan(self, request):
        """Run candidate detection now (the same task beat runs nightly)."""
        from referrals.tasks import reclaims_scan_task

        result = reclaims_scan_task.delay()
        return Response({"task_id": result.id}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=ReclaimProposalSerializer, responses=ReclaimCaseSerializer)
    @action(detail=True, methods=["post"])
    def propose(self, request, pk=None):
        """Put a candidate in front of compliance (the proposer cannot approve it)."""
        data = ReclaimProposalSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        reclaim = reclaim_services.reclaim_propose(
            actor=request.user, reclaim=self.get_object(), note=data.validated_data["note"]
        )
        return self._answer(reclaim)

    @extend_schema(request=ReclaimDecisionSerializer, responses=ReclaimCaseSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        """Compliance approves, with a reason: the partner is notified through the outbox."""
        data = ReclaimDecisionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        reclaim = reclaim_services.reclaim_approve(
            actor=request.user, reclaim=self.get_object(), reason=data.validated_data["reason"]
        )
        return self._answer(reclaim)

    @extend_schema(request=ReclaimDecisionSerializer, responses=ReclaimCaseSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        data = ReclaimDecisionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        reclaim = reclaim_services.reclaim_reject(
            actor=request.user, reclaim=self.get_object(), reason=data.validated_data["reason"]
        )
        return self._answer(reclaim)
