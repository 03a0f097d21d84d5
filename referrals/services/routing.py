"""Routing: which partners get this applicant, under which contract version, and why not the others.

Candidates = partners named in the consent ∩ active partners with a contract in force ∩ contract
eligibility ∩ the global suitability policy ∩ not referred the same person within the contract's
dedupe window ∩ daily and monthly caps not reached. Runs inside the intake transaction.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from partners.models import Contract, Partner
from partners.selectors import contracts_in_force
from referrals.models import Applicant, CapCounter, Consent, Dispatch, Referral, RoutingDecision


@dataclass(frozen=True)
class Exclusion:
    reason: str
    detail: str = ""


def eligibility_exclusion(contract: Contract, applicant: Applicant, today: datetime.date) -> Exclusion | None:
    """The first eligibility rule of ``contract`` that ``applicant`` fails, or ``None``."""
    rules = contract.eligibility or {}
    amount = applicant.requested_amount
    if rules.get("min_amount") is not None and amount < Decimal(rules["min_amount"]):
        return Exclusion("amount_below_minimum", f"{amount} < {rules['min_amount']}")
    if rules.get("max_amount") is not None and amount > Decimal(rules["max_amount"]):
        return Exclusion("amount_above_maximum", f"{amount} > {rules['max_amount']}")
    if rules.get("terms_months") and applicant.requested_term_months not in rules["terms_months"]:
        return Exclusion("term_not_offered", f"{applicant.requested_term_months} months")
    if rules.get("provinces") and applicant.province not in rules["provinces"]:
        return Exclusion("province_not_served", applicant.province)
    age = applicant.age_on(today)
    if rules.get("min_age") is not None and age < rules["min_age"]:
        return Exclusion("age_below_contract_minimum", f"{age} < {rules['min_age']}")
    if rules.get("max_age") is not None and age > rules["max_age"]:
        return Exclusion("age_above_contract_maximum", f"{age} > {rules['max_age']}")
    if rules.get("credit_grades") and applicant.credit_grade not in rules["credit_grades"]:
        return Exclusion("credit_grade_not_accepted", applicant.credit_grade or "—")
    if rules.get("decline_reasons") and not set(applicant.decline_reasons) & set(rules["decline_reasons"]):
        return Exclusion("decline_reason_not_accepted", ",".join(applicant.decline_reasons))
    return None


def suitability_exclusion(applicant: Applicant, today: datetime.date) -> Exclusion | None:
    """The lender's own suitability policy (settings), whatever the contracts say."""
    age = applicant.age_on(today)
    low, high = settings.SPILLWAY_SUITABILITY_MIN_AGE, settings.SPILLWAY_SUITABILITY_MAX_AGE
    if not low <= age <= high:
        return Exclusion("outside_suitability_policy", f"age {age} outside {low}–{high}")
    return None


def expected_fee(contract: Contract) -> Decimal:
    return Decimal((contract.fees or {}).get("application_fee", "0"))


def _take_slots(contract: Contract, wanted: int, now: datetime.datetime) -> tuple[int, str]:
    """Reserve up to ``wanted`` referrals under the contract's daily and monthly caps.

    The counter rows are locked (SELECT … FOR UPDATE) while they are read and bumped, so two
    routings running at once cannot both take the last slot.
    """
    local = timezone.localtime(now)
    limits = [(local.strftime("%Y-%m-%d"), contract.daily_cap, "daily_cap_reached"),
              (local.strftime("%Y-%m"), contract.monthly_cap, "monthly_cap_reached")]  # fmt: skip
    granted, reason = wanted, ""
    counters = []
    for period, cap, why in limits:
        if cap is None:
            continue
        CapCounter.objects.get_or_create(contract=contract, period=period)
        counter = CapCounter.objects.select_for_update().get(contract=contract, period=period)
        room = max(cap - counter.count, 0)
        if room < granted:
            granted, reason = room, why
        counters.append(counter)
    if granted:
        CapCounter.objects.filter(pk__in=[c.pk for c in counters]).update(count=F("count") + granted)
    return granted, reason


def referral_route(applicants: Iterable[Applicant], *, now: datetime.datetime | None = None) -> list[Referral]:
    """Create the referrals (``queued``) and the routing decisions for freshly taken-in applicants,
    and their probe dispatches; the probes are enqueued when the transaction commits."""
    applicants = list(applicants)
    if not applicants:
        return []
    now = now or timezone.now()
    today = timezone.localdate(now)
    by_id = {a.pk: a for a in applicants}
    consents = {
        c.applicant_id: c
        for c in Consent.objects.filter(applicant_id__in=by_id).prefetch_related("recipients__partner")
    }
    named: dict = {aid: [r.partner for r in c.recipients.all()] for aid, c in consents.items()}
    partner_ids = {p.pk for partners in named.values() for p in partners}
    in_force = contracts_in_force(partner_ids=partner_ids, at=now)
    recent = _recently_referred(applicants, in_force, now)

    decisions: list[RoutingDecision] = []
    wanted: dict[int, list[Applicant]] = defaultdict(list)  # contract id → applicants passing every rule but caps
    for applicant in applicants:
        consent = consents.get(applicant.pk)
        if consent is None or consent.status != Consent.Status.GRANTED:
            continue
        policy = suitability_exclusion(applicant, today)
        for partner in named[applicant.pk]:
            contract = in_force.get(partner.pk)
            exclusion = None
            if partner.status != Partner.Status.ACTIVE:
                exclusion = Exclusion("partner_not_active", partner.status)
            elif contract is None:
                exclusion = Exclusion("no_contract_in_force")
            elif policy is not None:
                exclusion = policy
            else:
                exclusion = eligibility_exclusion(contract, applicant, today)
            if exclusion is None and (applicant.national_id_index, partner.pk) in recent.get(contract.pk, set()):
                exclusion = Exclusion("referred_recently", f"within {contract.dedupe_days} days")
            if exclusion is not None:
                decisions.append(_decision(applicant, partner, contract, exclusion))
                continue
            wanted[contract.pk].append(applicant)

    referrals: list[Referral] = []
    contracts = {c.pk: c for c in in_force.values()}
    for contract_id, queue in wanted.items():
        contract = contracts[contract_id]
        granted, reason = _take_slots(contract, len(queue), now)
        for position, applicant in enumerate(queue):
            if position >= granted:
                decisions.append(_decision(applicant, contract.partner, contract, Exclusion(reason)))
                continue
            decisions.append(_decision(applicant, contract.partner, contract, None))
            referrals.append(
                Referral(
                    applicant=applicant,
                    consent=consents[applicant.pk],
                    partner=contract.partner,
                    contract=contract,
                    priority=contract.priority,
                    expected_fee=expected_fee(contract),
                )
            )
    RoutingDecision.objects.bulk_create(decisions, batch_size=1000)
    Referral.objects.bulk_create(referrals, batch_size=500)
    probes = [
        Dispatch(
            kind=Dispatch.Kind.PROBE,
            partner=r.partner,
            consent=r.consent,
            referral=r,
            idempotency_key=f"probe:{r.pk}",
            next_attempt_at=now,
            enqueued_at=now,
        )
        for r in referrals
    ]
    Dispatch.objects.bulk_create(probes, batch_size=500)
    _enqueue_on_commit(probes)
    return referrals


def _decision(applicant, partner, contract, exclusion: Exclusion | None) -> RoutingDecision:
    return RoutingDecision(
        applicant=applicant,
        partner=partner,
        contract=contract,
        outcome=RoutingDecision.Outcome.EXCLUDED if exclusion else RoutingDecision.Outcome.REFERRED,
        reason=exclusion.reason if exclusion else "eligible",
        detail=exclusion.detail[:300] if exclusion else "",
    )


def _recently_referred(applicants: list[Applicant], in_force: dict, now) -> dict[int, set]:
    """``{contract id: {(national id index, partner id), …}}`` of people referred within the
    contract's dedupe window — one query for the whole batch."""
    if not in_force:
        return {}
    longest = max(c.dedupe_days for c in in_force.values())
    if longest == 0:
        return {}
    rows = Referral.objects.filter(
        applicant__national_id_index__in={a.national_id_index for a in applicants},
        partner_id__in=in_force.keys(),
        created_at__gte=now - datetime.timedelta(days=longest),
    ).values_list("applicant__national_id_index", "partner_id", "created_at")
    found: dict[int, set] = defaultdict(set)
    for index, partner_id, created in rows:
        contract = in_force[partner_id]
        if created >= now - datetime.timedelta(days=contract.dedupe_days):
            found[contract.pk].add((index, partner_id))
    return found


def _enqueue_on_commit(dispatches: list[Dispatch]) -> None:
    """One message per applicant (its probes), sent only once the rows are committed."""
    if not dispatches:
        return
    by_applicant: dict = defaultdict(list)
    for dispatch in dispatches:
        by_applicant[dispatch.consent_id].append(dispatch.pk)

    def send() -> None:
        from config.celery import enqueue
        from referrals.tasks import dispatch_send_task

        for ids in by_applicant.values():
            enqueue(dispatch_send_task, ids)

    transaction.on_commit(send)
