"""Every write to partners and contracts: the same rules from the API, the admin and commands."""

from __future__ import annotations

import datetime
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext as _
from django_fsm import TransitionNotAllowed, can_proceed

from partners.models import Contract, Partner

PARTNER_EDITABLE = {
    "name", "license_type", "credit_code", "contact_email", "contact_phone", "api_base_url",
    "api_secret", "phone_hash", "timeout_ms", "max_requests_per_second", "connector",
    "pia_reference", "pia_completed_on",
}  # fmt: skip
CONTRACT_EDITABLE = {
    "effective_from", "effective_to", "priority", "eligibility", "data_fields", "daily_cap",
    "monthly_cap", "dedupe_days", "fees", "clawback", "reclaim",
}  # fmt: skip

_STATUS_TRANSITIONS = {
    Partner.Status.ACTIVE: "activate",
    Partner.Status.SUSPENDED: "suspend",
    Partner.Status.OFFBOARDED: "offboard",
}


def _set_status(partner: Partner, target: str, *, actor) -> None:
    """Move a partner to ``target`` through its state machine, or explain why it cannot."""
    if partner.status == target:
        return
    if target != Partner.Status.ONBOARDING and not actor.has_perm("partners.change_partner_status"):
        raise PermissionDenied(_("You may not change a partner's status."))
    method_name = _STATUS_TRANSITIONS.get(target)
    if method_name is None:
        raise ValidationError({"status": [_("A partner cannot go back to onboarding.")]})
    method = getattr(partner, method_name)
    if target == Partner.Status.ACTIVE and not partner.has_pia:
        raise ValidationError(
            {
                "status": [
                    _("A partner cannot become active without a PIA on record (pia_reference and pia_completed_on).")
                ]
            }
        )
    if not can_proceed(method):
        raise ValidationError(
            {"status": [_("Cannot change status from %(old)s to %(new)s.") % {"old": partner.status, "new": target}]}
        )
    method()


@transaction.atomic
def partner_create(*, actor, data: dict[str, Any]) -> Partner:
    """Put a new partner on the list (normally ``onboarding``; ``active`` needs a PIA)."""
    target = data.get("status") or Partner.Status.ONBOARDING
    fields = {key: value for key, value in data.items() if key in PARTNER_EDITABLE | {"code"}}
    partner = Partner(**fields)
    if partner.api_secret:
        partner.api_secret_changed_at = timezone.now()
    _set_status(partner, target, actor=actor)
    partner.full_clean()
    partner._history_user = actor
    partner.save()
    return partner


@transaction.atomic
def partner_update(*, actor, partner: Partner, data: dict[str, Any]) -> Partner:
    """Edit a partner; a ``status`` in ``data`` goes through the state machine and its rules."""
    partner = Partner.objects.select_for_update().get(pk=partner.pk)
    unknown = set(data) - PARTNER_EDITABLE - {"status"}
    if unknown:
        raise ValidationError({key: [_("This field cannot be changed.")] for key in sorted(unknown)})
    for key, value in data.items():
        if key == "status":
            continue
        if key == "api_secret":
            if not value:
                continue  # blank means “keep the current secret”
            partner.api_secret_changed_at = timezone.now()
        setattr(partner, key, value)
    if "status" in data:
        _set_status(partner, data["status"], actor=actor)
    elif partner.status == Partner.Status.ACTIVE and not partner.has_pia:
        raise ValidationError({"pia_reference": [_("An active partner must keep its PIA on record.")]})
    partner.full_clean()
    partner._history_user = actor
    partner.save()
    return partner


@transaction.atomic
def contract_create(*, actor, partner: Partner, data: dict[str, Any]) -> Contract:
    """Draft a new contract version for ``partner``; versions are numbered 1, 2, 3 per partner."""
    # Lock the partner so two drafts created at once cannot take the same version number.
    Partner.objects.select_for_update().filter(pk=partner.pk).first()
    last = Contract.objects.filter(partner=partner).aggregate(last=Max("version"))["last"] or 0
    fields = {key: value for key, value in data.items() if key in CONTRACT_EDITABLE}
    contract = Contract(partner=partner, version=last + 1, created_by=actor, last_edited_by=actor, **fields)
    contract.full_clean()
    contract._history_user = actor
    contract.save()
    return contract


def _locked(contract: Contract) -> Contract:
    return Contract.objects.select_for_update().select_related("partner").get(pk=contract.pk)


@transaction.atomic
def contract_update(*, actor, contract: Contract, data: dict[str, Any]) -> Contract:
    """Edit a draft. An approved contract is never edited: draft a new version instead."""
    contract = _locked(contract)
    if contract.status != Contract.Status.DRAFT:
        raise ValidationError(
            {
                "status": [
                    _("Only draft versions can be edited; this one is %(status)s. Draft a new version instead.")
                    % {"status": contract.status}
                ]
            }
        )
    unknown = set(data) - CONTRACT_EDITABLE
    if unknown:
        raise ValidationError({key: [_("This field cannot be changed.")] for key in sorted(unknown)})
    for key, value in data.items():
        setattr(contract, key, value)
    contract.last_edited_by = actor
    contract.full_clean()
    contract._history_user = actor
    contract.save()
    return contract


def _transition(contract: Contract, name: str) -> None:
    method = getattr(contract, name)
    try:
        method()
    except TransitionNotAllowed as exc:
        raise ValidationError(
            {
                "status": [
                    _("Cannot %(action)s a contract version that is %(status)s.")
                    % {"action": name, "status": contract.status}
                ]
            }
        ) from exc


@transaction.atomic
def contract_submit(*, actor, contract: Contract) -> Contract:
    """Send a draft to compliance for approval."""
    contract = _locked(contract)
    _transition(contract, "submit")
    contract.submitted_by = actor
    contract.submitted_at = timezone.now()
    contract.rejection_reason = ""
    contract._history_user = actor
    contract.save()
    return contract


@transaction.atomic
def contract_approve(*, actor, contract: Contract) -> Contract:
    """Approve a version (four-eyes) and put it in force; the partner's previous active version is
    superseded and ends the day before this one starts."""
    contract = _locked(contract)
    if actor.pk in {contract.created_by_id, contract.last_edited_by_id}:
        raise PermissionDenied(
            _("Four-eyes rule: whoever created or last edited a contract version cannot approve it.")
        )
    # Lock the partner's versions so two approvals cannot both become active.
    previous = (
        Contract.objects.select_for_update()
        .filter(partner_id=contract.partner_id, status=Contract.Status.ACTIVE)
        .exclude(pk=contract.pk)
        .first()
    )
    _transition(contract, "approve")
    if previous is not None:
        if contract.effective_from <= previous.effective_from:
            raise ValidationError(
                {
                    "effective_from": [
                        _("Must be after the current active version's effective_from (%(date)s).")
                        % {"date": previous.effective_from.isoformat()}
                    ]
                }
            )
        end = contract.effective_from - datetime.timedelta(days=1)
        previous.supersede()
        if previous.effective_to is None or previous.effective_to > end:
            previous.effective_to = end
        previous._history_user = actor
        previous.save()
    contract.approved_by = actor
    contract.approved_at = timezone.now()
    contract._history_user = actor
    contract.save()
    return contract


@transaction.atomic
def contract_reject(*, actor, contract: Contract, reason: str) -> Contract:
    """Send a pending version back to draft with the reviewer's reason."""
    if not (reason or "").strip():
        raise ValidationError({"reason": [_("A reason is required.")]})
    contract = _locked(contract)
    _transition(contract, "reject")
    contract.rejection_reason = reason.strip()
    contract._history_user = actor
    contract.save()
    return contract


@transaction.atomic
def contract_terminate(*, actor, contract: Contract, reason: str = "") -> Contract:
    """End an approved version at once; from this moment the partner receives nothing under it.

    api.md's terminate takes no body, so the reason is optional here (the admin asks for one)."""
    contract = _locked(contract)
    _transition(contract, "terminate")
    contract.terminated_by = actor
    contract.terminated_at = timezone.now()
    contract.termination_reason = (reason or "").strip()
    contract._history_user = actor
    contract.save()
    return contract


@transaction.atomic
def partner_pause(*, actor, partner: Partner, reason: str) -> Partner:
    """Operations stops all sending to a failing partner for now; its queued work waits."""
    if not (reason or "").strip():
        raise ValidationError({"reason": [_("A reason is required.")]})
    partner = Partner.objects.select_for_update().get(pk=partner.pk)
    partner.paused, partner.pause_reason = True, reason.strip()[:200]
    partner._history_user = actor
    partner.save(update_fields=["paused", "pause_reason", "updated_at"])
    return partner


@transaction.atomic
def partner_resume(*, actor, partner: Partner) -> Partner:
    """Sending to the partner starts again (waiting work goes at its next sweep)."""
    partner = Partner.objects.select_for_update().get(pk=partner.pk)
    partner.paused, partner.pause_reason = False, ""
    partner._history_user = actor
    partner.save(update_fields=["paused", "pause_reason", "updated_at"])
    return partner


def partner_circuit_reset(*, actor, partner: Partner) -> None:
    """Close the partner's circuit breaker by hand (the partner says it is fixed)."""
    from partners.circuit import circuit_reset

    circuit_reset(partner.pk)
