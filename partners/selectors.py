"""Reads about partners and contracts that carry a rule."""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from django.db.models import Q, QuerySet
from django.utils import timezone

from partners.models import Contract, Partner


def partner_list() -> QuerySet[Partner]:
    return Partner.objects.all().order_by("code")


def contract_list() -> QuerySet[Contract]:
    return Contract.objects.select_related(
        "partner", "created_by", "last_edited_by", "submitted_by", "approved_by", "terminated_by"
    )


def _in_force_q(at: datetime.datetime) -> Q:
    day = timezone.localdate(at)
    return (
        Q(status__in=Contract.APPROVED_STATUSES, effective_from__lte=day)
        & (Q(effective_to__isnull=True) | Q(effective_to__gte=day))
        # Termination ends a version at the moment it happens, not at the end of the day.
        & (Q(terminated_at__isnull=True) | Q(terminated_at__gt=at))
    )


def contract_in_force(*, partner: Partner | int, at: datetime.datetime | None = None) -> Contract | None:
    """The approved version governing ``partner`` at moment ``at`` (default: now), or ``None``.

    In force means: approved (active, or superseded/terminated but not yet ended), with
    ``effective_from ≤ date(at) ≤ effective_to`` in Asia/Shanghai, and not terminated before ``at``.
    """
    at = at or timezone.now()
    partner_id = partner.pk if isinstance(partner, Partner) else partner
    return (
        Contract.objects.filter(_in_force_q(at), partner_id=partner_id)
        .select_related("partner")
        .order_by("-effective_from", "-version")
        .first()
    )


def contracts_in_force(*, partner_ids: Iterable[int], at: datetime.datetime | None = None) -> dict[int, Contract]:
    """``contract_in_force`` for many partners in one query: ``{partner_id: contract}``."""
    at = at or timezone.now()
    result: dict[int, Contract] = {}
    rows = (
        Contract.objects.filter(_in_force_q(at), partner_id__in=list(partner_ids))
        .select_related("partner")
        .order_by("partner_id", "-effective_from", "-version")
    )
    for contract in rows:
        result.setdefault(contract.partner_id, contract)
    return result


def contract_previous_version(contract: Contract) -> Contract | None:
    """The version before this one, for showing what changed."""
    return (
        Contract.objects.filter(partner_id=contract.partner_id, version__lt=contract.version)
        .order_by("-version")
        .first()
    )


def contract_terms_diff(contract: Contract, previous: Contract | None) -> list[tuple[str, object, object]]:
    """``[(term, old, new), ...]`` for every term that differs from ``previous`` (flattened keys)."""
    if previous is None:
        return []
    old, new = _flat_terms(previous), _flat_terms(contract)
    return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def _flat_terms(contract: Contract) -> dict[str, object]:
    flat: dict[str, object] = {
        "effective_from": contract.effective_from,
        "effective_to": contract.effective_to,
        "priority": contract.priority,
        "data_fields": contract.data_fields,
        "daily_cap": contract.daily_cap,
        "monthly_cap": contract.monthly_cap,
        "dedupe_days": contract.dedupe_days,
    }
    for block in ("eligibility", "fees", "clawback", "reclaim"):
        for key, value in (getattr(contract, block) or {}).items():
            flat[f"{block}.{key}"] = value
    return flat
