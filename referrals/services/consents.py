"""Consent texts, withdrawal, expiry, and what compliance does with one person's record:
reveal personal data (with a reason, recorded) and export the evidence bundle (recorded)."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from referrals import merkle
from referrals.models import Applicant, Consent, ConsentEvent, ConsentText, LedgerCheckpoint
from referrals.services import dispatch
from referrals.services.ledger import checkpoint_document, checkpoint_leaves, ledger_append
from referrals.services.reclaims import reclaims_block_for_consent

REVEALABLE_FIELDS = ("name", "national_id", "phone")


def consent_text_create(*, actor, code: str, body: str, validity_days: int, language: str = "zh-hans") -> ConsentText:
    """Record a new consent wording. Texts are never edited: a new wording is a new code."""
    text = ConsentText(
        code=code,
        language=language,
        body=body,
        sha256=hashlib.sha256(body.encode("utf-8")).hexdigest(),
        validity_days=validity_days,
        created_by=actor,
    )
    text.full_clean()
    text.save(force_insert=True)
    return text


@dataclass
class WithdrawalResult:
    consent: Consent
    cancelled_referrals: list = field(default_factory=list)


def consent_withdraw(
    *, actor, consent: Consent, channel: str, reason: str = "", withdrawn_at: datetime.datetime | None = None
) -> WithdrawalResult:
    """Withdraw a consent. When this returns, nothing more is sent under it (but the withdrawal
    notice to partners that already received data). Withdrawing twice changes nothing.

    1. lock the consent (the lock every send takes while it checks the consent), mark it
       withdrawn, cancel every pending probe and application, record it in the ledger, commit;
    2. wait for calls already in flight to finish (bounded by the partners' timeouts);
    3. queue a withdrawal notice for every partner that received data under the consent.
    """
    with transaction.atomic():
        consent = Consent.objects.select_for_update(no_key=True).get(pk=consent.pk)
        if consent.status == Consent.Status.WITHDRAWN:
            return WithdrawalResult(consent)
        now = timezone.now()
        stated = withdrawn_at or now
        consent.withdraw()
        consent.withdrawn_at = stated
        consent.withdrawal_channel = channel
        consent.withdrawal_reason = reason
        consent.save(update_fields=["status", "withdrawn_at", "withdrawal_channel", "withdrawal_reason"])
        cancelled = dispatch.cancel_for_consent(consent)
        reclaims_block_for_consent(consent)
        ledger_append(
            consent=consent,
            type=ConsentEvent.Type.WITHDRAWN,
            occurred_at=now,
            payload={
                "withdrawn_at": merkle.utc_iso(stated),
                "channel": channel,
                "reason": reason,
                "by": actor.get_username(),
                "cancelled_referrals": [str(ref) for ref in cancelled],
            },
        )
    dispatch.wait_for_in_flight(consent)
    dispatch.withdrawal_notices(consent)
    return WithdrawalResult(consent, cancelled)


def consents_expire_due(*, now: datetime.datetime | None = None, limit: int = 1000) -> int:
    """Mark consents whose time ran out as expired, each with its ledger event.

    Sending already checks ``expires_at`` itself; this makes the state and the ledger say so.
    """
    now = now or timezone.now()
    due = list(
        Consent.objects.filter(status=Consent.Status.GRANTED, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    expired = 0
    for pk in due:
        with transaction.atomic():
            consent = Consent.objects.select_for_update(no_key=True).get(pk=pk)
            if consent.status != Consent.Status.GRANTED or consent.expires_at > now:
                continue  # withdrawn or extended meanwhile
            consent.expire()
            consent.expired_at = consent.expires_at
            consent.save(update_fields=["status", "expired_at"])
            cancelled = dispatch.cancel_for_consent(consent)
            reclaims_block_for_consent(consent)
            ledger_append(
                consent=consent,
                type=ConsentEvent.Type.EXPIRED,
                occurred_at=now,
                payload={
                    "expires_at": merkle.utc_iso(consent.expires_at),
                    "cancelled_referrals": [str(r) for r in cancelled],
                },
            )
            expired += 1
    return expired


def _latest_consent(applicant: Applicant) -> Consent:
    consent = applicant.consents.order_by("-created_at").first()
    if consent is None:
        raise ValidationError(_("This applicant has no consent on record."))
    return consent


def applicant_reveal(*, actor, applicant: Applicant, fields: list[str], reason: str) -> dict[str, str]:
    """Show personal data in clear to someone allowed to see it, for a stated reason; recorded in
    the ledger (``pii_revealed``) before anything is returned."""
    if not actor.has_perm("referrals.reveal_pii"):
        raise PermissionDenied(_("Revealing personal data needs the reveal_pii permission."))
    reason = (reason or "").strip()
    if len(reason) < 4:
        raise ValidationError({"reason": [_("State why you need to see this (at least 4 characters).")]})
    unknown = sorted(set(fields) - set(REVEALABLE_FIELDS))
    if unknown or not fields:
        raise ValidationError({"fields": [_("Choose from: name, national_id, phone.")]})
    fields = [f for f in REVEALABLE_FIELDS if f in fields]
    with transaction.atomic():
        ledger_append(
            consent=_latest_consent(applicant),
            type=ConsentEvent.Type.PII_REVEALED,
            payload={"by": actor.get_username(), "fields": fields, "reason": reason},
        )
    return {name: getattr(applicant, name) for name in fields}


def evidence_bundle(applicant: Applicant) -> dict:
    """Everything needed to prove what this person agreed to and where their data went: consents,
    the exact texts, every ledger event with its hashes, and for each event the checkpoint that
    seals it with an RFC 6962 inclusion proof. Personal data stays masked."""
    consents = list(
        applicant.consents.select_related("text").prefetch_related("recipients__partner").order_by("created_at")
    )
    texts = {c.text.code: c.text for c in consents}
    checkpoints = list(LedgerCheckpoint.objects.order_by("id"))
    trees: dict[int, tuple[list[int], list[bytes]]] = {}
    bundle_consents = []
    for consent in consents:
        events = list(consent.events.order_by("seq"))
        bundle_consents.append(
            {
                "id": str(consent.pk),
                "status": consent.status,
                "text_code": consent.text.code,
                "text_sha256": consent.text_sha256,
                "recipients": [
                    {
                        "partner": r.partner.code,
                        "name": r.disclosed_name,
                        "contact_email": r.disclosed_contact_email,
                        "contact_phone": r.disclosed_contact_phone,
                    }
                    for r in consent.recipients.all()
                ],
                "data_categories": consent.data_categories,
                "purposes": consent.purposes,
                "channel": consent.channel,
                "granted_at": merkle.utc_iso(consent.granted_at),
                "expires_at": merkle.utc_iso(consent.expires_at),
                "withdrawn_at": merkle.utc_iso(consent.withdrawn_at) if consent.withdrawn_at else None,
                "events": [_event_entry(event, checkpoints, trees) for event in events],
            }
        )
    return {
        "format": "spillway-evidence-v1",
        "generated_at": merkle.utc_iso(timezone.now()),
        "applicant": {
            "id": str(applicant.pk),
            "external_id": applicant.external_id,
            "name": applicant.name_masked,
            "national_id": applicant.national_id_masked,
            "phone": applicant.phone_masked,
        },
        "consent_texts": [
            {
                "code": t.code,
                "language": t.language,
                "validity_days": t.validity_days,
                "sha256": t.sha256,
                "body": t.body,
            }
            for t in texts.values()
        ],
        "consents": bundle_consents,
        "checkpoints": [checkpoint_document(cp) for cp in checkpoints if _used(cp, bundle_consents)],
        "how_to_verify": "docs/compliance.md",
    }


def _used(checkpoint: LedgerCheckpoint, consents: list[dict]) -> bool:
    return any(e.get("checkpoint") == checkpoint.pk for c in consents for e in c["events"])


def _event_entry(event: ConsentEvent, checkpoints: list[LedgerCheckpoint], trees: dict) -> dict:
    entry = {
        "id": event.pk,
        "document": merkle.event_document(
            consent_id=event.consent_id,
            seq=event.seq,
            type=event.type,
            occurred_at=event.occurred_at,
            payload=event.payload,
            prev_hash=event.prev_hash,
        ),
        "hash": event.hash,
        "checkpoint": None,
    }
    for checkpoint in checkpoints:
        if checkpoint.first_event_id <= event.pk <= checkpoint.last_event_id:
            if checkpoint.pk not in trees:
                trees[checkpoint.pk] = checkpoint_leaves(checkpoint)
            ids, leaves = trees[checkpoint.pk]
            index = ids.index(event.pk)
            entry.update(
                checkpoint=checkpoint.pk,
                leaf_index=index,
                tree_size=len(ids),
                inclusion_proof=merkle.inclusion_proof(leaves, index),
            )
            break
    return entry


def evidence_export(
    *, actor, applicant: Applicant, job: str | None = None, store: Callable[[dict], None] | None = None
) -> dict:
    """Build the evidence bundle for one applicant and record the export in the ledger.

    From a background job: ``store(bundle)`` keeps the file before the export is recorded (a
    recorded export always has its file), and ``job`` is named in the event, so a job that a lost
    worker left half done can tell which applicants it has already exported (once each)."""
    if not actor.has_perm("referrals.export_evidence"):
        raise PermissionDenied(_("Exporting evidence needs the export_evidence permission."))
    consent = _latest_consent(applicant)
    bundle = evidence_bundle(applicant)
    digest = hashlib.sha256(merkle.canonical_json(bundle)).hexdigest()
    if store is not None:
        store(bundle)
    payload = {"by": actor.get_username(), "bundle_sha256": digest}
    if job is not None:
        payload["job"] = job
    with transaction.atomic():
        ledger_append(consent=consent, type=ConsentEvent.Type.EVIDENCE_EXPORTED, payload=payload)
    return bundle
