"""How the compliance screens show ledger hashes, payloads, times and consent vocabulary."""

from __future__ import annotations

import datetime
import json
import zoneinfo
from typing import Any

from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from config.admin_tools import EMPTY
from config.regions import region_name

# api.md: the server stores UTC and shows Asia/Shanghai, whatever the viewer's settings.
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
HASH_SHOWN = 12
PAYLOAD_VALUE_SHOWN = 60
PAYLOAD_KEYS_SHOWN = 5
# What a compliance officer looks for first in an event; ids and hashes stay in the full JSON.
PAYLOAD_KEYS_FIRST = (
    "by",
    "reason",
    "fields",
    "partner",
    "recipients",
    "channel",
    "text_code",
    "purposes",
    "data_categories",
    "contract_version",
    "withdrawn_at",
    "expires_at",
    "cancelled_referrals",
    "bundle_sha256",
)

DATA_CATEGORY_LABELS = {
    "identity": _("identity (name, ID number)"),
    "contact": _("contact (phone)"),
    "location": _("location (province, city)"),
    "loan_request": _("loan request (amount, term)"),
    "income": _("income"),
}
PURPOSE_LABELS = {
    "loan_referral": _("loan referral"),
    "reclaim_offer": _("reclaim offer"),
}

SEARCH_HINT = _("Exact search by phone, ID number or external id (typed in full; partial numbers find nothing).")


def shanghai_time(moment: datetime.datetime | None) -> str:
    if moment is None:
        return EMPTY
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def hash_code(digest: str | None) -> SafeString:
    """A SHA-256 in monospace, abbreviated, the full value on hover (and selectable with a click)."""
    if not digest:
        return format_html("{}", EMPTY)
    return format_html('<code class="ledger-hash" title="{}">{}…</code>', digest, digest[:HASH_SHOWN])


def region_display(code: str) -> str:
    if not code:
        return EMPTY
    name = region_name(code)
    return f"{code} {name}" if name else code


def labelled(values: list[str] | None, labels: dict[str, Any]) -> str:
    return "、".join(str(labels.get(value, value)) for value in values or []) or EMPTY


def _short(value: Any) -> str:
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            # e.g. the named recipients: their partner codes say enough in a summary
            text = ", ".join(str(item.get("partner") or item.get("id") or "{…}") for item in value)
        else:
            text = ", ".join(str(item) for item in value)
        text = f"[{text}]"
    elif isinstance(value, dict):
        text = "{…}"
    else:
        text = str(value)
    return text if len(text) <= PAYLOAD_VALUE_SHOWN else text[: PAYLOAD_VALUE_SHOWN - 1] + "…"


def payload_summary(payload: dict) -> tuple[list[tuple[str, str]], int]:
    """A few ``key: short value`` pairs for the timeline, and how many keys were left out (the
    full JSON is one click away)."""
    payload = payload or {}
    keys = [key for key in PAYLOAD_KEYS_FIRST if key in payload]
    keys += [key for key in payload if key not in keys]
    shown = keys[:PAYLOAD_KEYS_SHOWN]
    return [(key, _short(payload[key])) for key in shown], len(keys) - len(shown)


def payload_json(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True)
