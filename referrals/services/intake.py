"""Intake: declined applicants and their consents arrive from the origination system.

Single and batch intake are the same code: a batch of one is a single intake. Everything valid
in a call is written in one transaction with bulk inserts (applicants, consents, named partners,
the first ledger event of each consent); ``external_id`` makes it idempotent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from config.crypto import blind_index
from partners.models import Partner
from referrals import merkle
from referrals.models import Applicant, Consent, ConsentRecipient, ConsentText
from referrals.models.consent import ConsentEvent
from referrals.services.ledger import genesis_events
from referrals.services.routing import referral_route
from referrals.validators import birth_date_of

MAX_BATCH = 1000


def _queryable(value: Any) -> bool:
    """A raw, not yet validated value that may go into a lookup query. (PostgreSQL refuses NUL
    characters outright; such a value is refused by validation instead, with a field error.)"""
    return isinstance(value, str) and "\x00" not in value


@dataclass
class Lookups:
    """Everything validation needs from the database, fetched once per call."""

    texts: dict[str, ConsentText]
    partners: dict[str, Partner]

    @classmethod
    def for_items(cls, items: Sequence[Any]) -> Lookups:
        text_codes, partner_codes = set(), set()
        for item in items:
            consent = item.get("consent") if isinstance(item, dict) else None
            if isinstance(consent, dict):
                if _queryable(consent.get("text_code")):
                    text_codes.add(consent["text_code"])
                if isinstance(consent.get("partners"), list):
                    partner_codes.update(code for code in consent["partners"] if _queryable(code))
        return cls(
            texts={t.code: t for t in ConsentText.objects.filter(code__in=text_codes)},
            partners={p.code: p for p in Partner.objects.filter(code__in=partner_codes)},
        )


@dataclass
class IntakeResult:
    """The outcome of one item: 201 created, 200 replayed, 400 invalid, 409 conflicting replay."""

    index: int
    status: int
    applicant: Applicant | None = None
    errors: dict = field(default_factory=dict)


def request_sha256(item: Any) -> str:
    return hashlib.sha256(merkle.canonical_json(item)).hexdigest()


def applicant_intake(
    *, actor, items: Sequence[Any], validate: Callable[[Any, Lookups], tuple[dict | None, dict]]
) -> list[IntakeResult]:
    """Take in applicants with their consents; each item stands or falls on its own.

    ``validate(item, lookups)`` returns ``(validated_data, errors)`` — the API passes its
    serializer, so the rules and the error format are the API's. A concurrent request with the
    same ``external_id`` is resolved by retrying: the second writer sees the first one's row.
    """
    for _attempt in range(3):
        try:
            return _intake_once(actor=actor, items=items, validate=validate)
        except IntegrityError:
            continue  # someone else inserted one of our external_ids meanwhile: look again
    return _intake_once(actor=actor, items=items, validate=validate)


def _intake_once(*, actor, items, validate) -> list[IntakeResult]:
    lookups = Lookups.for_items(items)
    hashes = [request_sha256(item) for item in items]
    # A list, not a set: an external_id may be any JSON value (a dict is unhashable); non-strings are dropped below.
    external_ids = [item.get("external_id") for item in items if isinstance(item, dict)]
    existing = {
        a.external_id: a for a in Applicant.objects.filter(external_id__in=[e for e in external_ids if _queryable(e)])
    }

    results: list[IntakeResult] = []
    fresh: list[tuple[int, dict, str]] = []
    seen_in_call: dict[str, str] = {}
    for index, item in enumerate(items):
        ext = item.get("external_id") if isinstance(item, dict) else None
        prior = existing.get(ext) if isinstance(ext, str) else None
        if prior is not None:
            status = 200 if prior.request_sha256 == hashes[index] else 409
            results.append(IntakeResult(index, status, prior if status == 200 else None, _conflict(status)))
            continue
        if isinstance(ext, str) and ext in seen_in_call:
            status = 200 if seen_in_call[ext] == hashes[index] else 409
            results.append(IntakeResult(index, status, None, _conflict(status)))  # filled in below
            continue
        data, errors = validate(item, lookups)
        if errors:
            results.append(IntakeResult(index, 400, None, errors))
            continue
        seen_in_call[data["external_id"]] = hashes[index]
        fresh.append((index, data, hashes[index]))
        results.append(IntakeResult(index, 201))

    with transaction.atomic():
        created = _create(actor=actor, fresh=fresh)
        # Routing runs in the same transaction: an applicant is never stored without its referrals.
        referral_route(list(created.values()))

    by_external = {a.external_id: a for a in created.values()}
    for result in results:
        if result.status == 201:
            result.applicant = created[result.index]
        elif result.status == 200 and result.applicant is None:
            result.applicant = by_external.get(items[result.index]["external_id"])
    return results


def _conflict(status: int) -> dict:
    if status == 409:
        return {"external_id": ["An applicant with this external_id was already received with a different body."]}
    return {}


def _create(*, actor, fresh: list[tuple[int, dict, str]]) -> dict[int, Applicant]:
    applicants: dict[int, Applicant] = {}
    consents: list[Consent] = []
    recipients: list[ConsentRecipient] = []
    first_events: list[tuple[Consent, str, dict, Any]] = []
    for index, data, digest in fresh:
        grant = data["consent"]
        applicant = Applicant(
            external_id=data["external_id"],
            name=data["name"],
            national_id=data["national_id"],
            phone=data["phone"],
            national_id_index=blind_index(data["national_id"], purpose="national_id"),
            phone_index=blind_index(data["phone"], purpose="phone"),
            birth_date=birth_date_of(data["national_id"]),
            province=data["province"],
            city=data.get("city", ""),
            requested_amount=data["requested_amount"],
            requested_term_months=data["requested_term_months"],
            expected_apr=data.get("expected_apr"),
            monthly_income=data.get("monthly_income"),
            credit_grade=data.get("credit_grade", ""),
            decline_reasons=data["decline_reasons"],
            declined_at=data["declined_at"],
            request_sha256=digest,
            created_by=actor,
        )
        consent = Consent(
            applicant=applicant,
            text=grant["text"],
            text_sha256=grant["text_sha256"],
            data_categories=grant["data_categories"],
            purposes=grant["purposes"],
            channel=grant["channel"],
            granted_at=grant["granted_at"],
            ip=grant["ip"],
            device_id=grant.get("device_id", ""),
            evidence_sha256=grant["evidence_sha256"],
            expires_at=grant["expires_at"],
        )
        named = []
        for code in grant["partners"]:
            partner = grant["partner_rows"][code]
            named.append(
                ConsentRecipient(
                    consent=consent,
                    partner=partner,
                    disclosed_name=partner.name,
                    disclosed_contact_email=partner.contact_email,
                    disclosed_contact_phone=partner.contact_phone,
                )
            )
        recipients.extend(named)
        payload = granted_payload(applicant, consent, named)
        first_events.append((consent, ConsentEvent.Type.GRANTED, payload, consent.granted_at))
        applicants[index] = applicant
        consents.append(consent)
    if not applicants:
        return {}
    Applicant.objects.bulk_create(applicants.values(), batch_size=500)
    Consent.objects.bulk_create(consents, batch_size=500)
    ConsentRecipient.objects.bulk_create(recipients, batch_size=1000)
    ConsentEvent.objects.bulk_create(genesis_events(first_events), batch_size=500)
    return applicants


def granted_payload(applicant: Applicant, consent: Consent, recipients: Sequence[ConsentRecipient]) -> dict:
    """What the ``granted`` event seals: the whole consent as recorded, with what was disclosed."""
    return {
        "applicant_id": str(applicant.pk),
        "external_id": applicant.external_id,
        "text_code": consent.text.code,
        "text_sha256": consent.text_sha256,
        "recipients": [
            {
                "partner": r.partner.code,
                "name": r.disclosed_name,
                "contact_email": r.disclosed_contact_email,
                "contact_phone": r.disclosed_contact_phone,
            }
            for r in recipients
        ],
        "data_categories": list(consent.data_categories),
        "purposes": list(consent.purposes),
        "channel": consent.channel,
        "granted_at": merkle.utc_iso(consent.granted_at),
        "expires_at": merkle.utc_iso(consent.expires_at),
        "ip": consent.ip,
        "device_id": consent.device_id,
        "evidence_sha256": consent.evidence_sha256,
    }
