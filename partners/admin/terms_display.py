"""Contract terms rendered readably, and the difference between two versions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from config.admin_tools import EMPTY
from config.regions import region_name
from partners import selectors, terms
from partners.models import Contract

# --- contract terms, readably -------------------------------------------------------------------
ANY = _("any")

TERM_LABELS: dict[str, dict[str, Any]] = {
    "eligibility": {
        "min_amount": _("Minimum amount (CNY)"),
        "max_amount": _("Maximum amount (CNY)"),
        "terms_months": _("Terms (months)"),
        "provinces": _("Provinces"),
        "min_age": _("Minimum age"),
        "max_age": _("Maximum age"),
        "credit_grades": _("Credit grades"),
        "decline_reasons": _("Decline reasons"),
    },
    "fees": {
        "application_fee": _("Application fee (CNY)"),
        "application_fee_tiers": _("Application fee tiers"),
        "approval_fee": _("Approval fee (CNY)"),
        "disbursement_rate": _("Disbursement rate"),
        "interest_share_rate": _("Interest share rate"),
        "vat_rate": _("VAT rate"),
    },
    "clawback": {
        "fpd_days": _("First-payment default window (days)"),
        "duplicate_return_hours": _("Duplicate return window (hours)"),
    },
    "reclaim": {
        "allowed": _("Reclaim allowed"),
        "min_ontime_installments": _("Minimum on-time instalments"),
        "fee": _("Reclaim fee (CNY)"),
        "non_solicit_days": _("Non-solicit period (days)"),
    },
}
GENERAL_LABELS = {
    "effective_from": _("Effective from"),
    "effective_to": _("Effective to"),
    "priority": _("Priority"),
    "data_fields": _("Data fields sent (consent category)"),
    "daily_cap": _("Daily cap"),
    "monthly_cap": _("Monthly cap"),
    "dedupe_days": _("Dedupe window (days)"),
}
GENERAL_EMPTY = {"effective_to": _("open-ended"), "daily_cap": _("none"), "monthly_cap": _("none")}
SECTION_LABELS = {
    "eligibility": _("Eligibility"),
    "fees": _("Fees"),
    "clawback": _("Clawback"),
    "reclaim": _("Reclaim"),
}


def _text(value: Any, *, key: str = "", empty: Any = EMPTY) -> str:
    """A term's value as plain text (escaped later by format_html)."""
    if value is None or value == [] or value == "":
        return str(empty)
    if isinstance(value, bool):
        return str(_("yes") if value else _("no"))
    if key.endswith("_rate"):
        try:
            return f"{value} ({Decimal(str(value)) * 100:.2f}%)"
        except InvalidOperation:
            return str(value)
    if key.endswith("provinces") and isinstance(value, list):
        return ", ".join(f"{code} {region_name(str(code)) or ''}".strip() for code in value)
    if key.endswith("application_fee_tiers") and isinstance(value, list):
        return "; ".join(_tier_text(tier) for tier in value)
    if key.endswith("data_fields") and isinstance(value, list):
        return ", ".join(f"{name} ({terms.FIELD_CATEGORIES.get(str(name), '?')})" for name in value)
    if isinstance(value, list):
        return ", ".join(_text(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _tier_text(tier: Any) -> str:
    if isinstance(tier, dict) and {"from_count", "fee"} <= set(tier):
        return str(_("from application no. %(count)s: %(fee)s")) % {"count": tier["from_count"], "fee": tier["fee"]}
    return _text(tier)


def _label_of(key: str) -> str:
    block, _dot, name = key.partition(".")
    label = TERM_LABELS.get(block, {}).get(name) if name else GENERAL_LABELS.get(key)
    return str(label or key)


def _show(key: str, value: Any) -> str:
    empty = ANY if key.startswith("eligibility.") else GENERAL_EMPTY.get(key, EMPTY)
    return _text(value, key=key, empty=empty)


def _term_rows(contract: Contract) -> Iterable[tuple[str, str, str]]:
    """``(term key, label, value)`` for the terms outside the JSON blocks."""
    for key in GENERAL_LABELS:
        yield key, _label_of(key), _show(key, getattr(contract, key))


def _block_rows(contract: Contract, block: str) -> Iterable[tuple[str, str, str]]:
    values = getattr(contract, block) or {}
    # Known terms in their usual order, then anything else stored (never hide a term).
    for name in [*TERM_LABELS[block], *sorted(set(values) - set(TERM_LABELS[block]))]:
        key = f"{block}.{name}"
        yield key, _label_of(key), _show(key, values.get(name))


def render_terms_table(contract: Contract) -> SafeString:
    sections: list[tuple[str, Iterable[tuple[str, str, str]]]] = [(str(_("General")), _term_rows(contract))]
    sections += [(str(SECTION_LABELS[block]), _block_rows(contract, block)) for block in TERM_LABELS]
    body = format_html_join(
        "",
        '<tr><th colspan="2" class="spillway-section">{}</th></tr>{}',
        (
            (title, format_html_join("", '<tr data-term="{}"><td>{}</td><td>{}</td></tr>', rows))
            for title, rows in sections
        ),
    )
    return format_html('<table class="spillway-terms"><tbody>{}</tbody></table>', body)


def render_terms_diff(contract: Contract) -> SafeString:
    previous = selectors.contract_previous_version(contract)
    if previous is None:
        return format_html("<p>{}</p>", _("This is the partner's first contract version."))
    changes = selectors.contract_terms_diff(contract, previous)
    if not changes:
        return format_html("<p>{}</p>", _("Same terms as version %(version)s.") % {"version": previous.version})
    rows = ((key, key, _label_of(key), _show(key, old), _show(key, new)) for key, old, new in changes)
    return format_html(
        '<table class="spillway-terms-diff"><thead><tr><th>{}</th><th>{}</th><th>{}</th></tr></thead>'
        "<tbody>{}</tbody></table>",
        _("Term"),
        _("Previous (v%(version)s, %(status)s)")
        % {"version": previous.version, "status": previous.get_status_display()},
        _("This version (v%(version)s)") % {"version": contract.version},
        format_html_join("", '<tr data-term="{}"><td title="{}">{}</td><td>{}</td><td>{}</td></tr>', rows),
    )
