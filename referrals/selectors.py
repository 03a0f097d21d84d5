"""Reads about applicants and consents that carry a rule (masking, search by blind index)."""

from __future__ import annotations

import re

from django.db.models import Prefetch, Q, QuerySet

from config.crypto import blind_index
from referrals.models import Applicant, Consent, ConsentEvent, ConsentRecipient

PHONE_RE = re.compile(r"^1[3-9]\d{9}$")
NATIONAL_ID_RE = re.compile(r"^\d{17}[\dXx]$")


def applicant_list() -> QuerySet[Applicant]:
    """Applicants with their consents and named partners, in a fixed number of queries."""
    consents = (
        Consent.objects.select_related("text")
        .prefetch_related(Prefetch("recipients", queryset=ConsentRecipient.objects.select_related("partner")))
        .order_by("-created_at")
    )
    return Applicant.objects.prefetch_related(Prefetch("consents", queryset=consents), "referrals__partner")


def applicant_search_q(term: str) -> Q | None:
    """An exact search by phone, ID number or external id, typed in clear and matched through the
    blind indexes (the clear values are never queried). ``None`` when the term is none of these."""
    term = (term or "").strip()
    if not term:
        return None
    if PHONE_RE.match(term):
        return Q(phone_index=blind_index(term, purpose="phone"))
    if NATIONAL_ID_RE.match(term):
        return Q(national_id_index=blind_index(term.upper(), purpose="national_id"))
    return Q(external_id=term)


def consent_events(consent: Consent) -> QuerySet[ConsentEvent]:
    return consent.events.order_by("seq")
