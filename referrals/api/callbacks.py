"""``POST /api/v1/partners/{code}/callbacks/``: signed events from partners (partner-protocol.md §3)."""

from __future__ import annotations

import json
import re

import structlog
from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import parsers, permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from partners import signing
from partners.models import Partner
from referrals.metrics import callback_rejected
from referrals.models import Referral
from referrals.services.callbacks import CallbackConflict, CallbackSerializer, callback_receive

log = structlog.get_logger(__name__)


class RawBodyParser(parsers.BaseParser):
    """Keep the exact bytes: the signature covers them, not their JSON meaning."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read()


class CallbackAnswerSerializer(serializers.Serializer):
    status = serializers.CharField()
    event_id = serializers.CharField()


class PartnerCallbackView(APIView):
    """Partners report decisions, loans and repayments here; requests are authenticated by their
    HMAC signature with the partner's secret (no user, no token)."""

    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    parser_classes = [RawBodyParser]
    throttle_classes: list = []

    @extend_schema(
        request=CallbackSerializer,
        responses={
            200: CallbackAnswerSerializer,
            400: OpenApiResponse(description="Malformed event (the body names the field)."),
            401: OpenApiResponse(description="Missing, wrong or stale signature."),
            404: OpenApiResponse(description="Unknown partner, or a referral unknown or of another partner."),
            409: OpenApiResponse(description="This event_id was received before with a different body."),
        },
        auth=[],
    )
    def post(self, request, code: str):
        partner = Partner.objects.filter(code=code).first() if re.fullmatch(r"[A-Z0-9_]{2,32}", code) else None
        if partner is None:
            callback_rejected("unknown_partner")
            return Response({"detail": "Unknown partner."}, status=status.HTTP_404_NOT_FOUND)
        raw = request.data if isinstance(request.data, bytes) else b""
        try:
            signing.verify(
                partner.api_secret, request.headers, raw, tolerance=settings.SPILLWAY_CALLBACK_TOLERANCE_SECONDS
            )
        except signing.SignatureError as exc:
            log.warning("callback refused", partner=partner.code, reason=exc.reason)
            callback_rejected("stale" if exc.reason == "stale" else "bad_signature")
            return Response({"detail": f"Signature refused: {exc.reason}."}, status=status.HTTP_401_UNAUTHORIZED)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            callback_rejected("malformed")
            return Response({"non_field_errors": ["The body is not JSON."]}, status=status.HTTP_400_BAD_REQUEST)
        if not isinstance(body, dict):
            callback_rejected("malformed")
            return Response(
                {"non_field_errors": ["The body must be a JSON object."]}, status=status.HTTP_400_BAD_REQUEST
            )
        try:
            with transaction.atomic():
                event, created = callback_receive(partner=partner, body=body)
        except serializers.ValidationError as exc:
            callback_rejected("malformed")
            return Response(exc.detail, status=status.HTTP_400_BAD_REQUEST)
        except Referral.DoesNotExist:
            callback_rejected("unknown_referral")
            return Response({"detail": "Unknown referral for this partner."}, status=status.HTTP_404_NOT_FOUND)
        except CallbackConflict:
            callback_rejected("conflict")
            return Response(
                {"event_id": ["This event_id was already received with a different body."]},
                status=status.HTTP_409_CONFLICT,
            )
        return Response({"status": "accepted" if created else "duplicate", "event_id": event.event_id})
