"""Shared pieces of the operations screens: display helpers, confirm-page operations, the queue summary."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.db.models import Count, Min
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext_lazy as _

# What the queue summary counts: referrals still on their way, and the dead ones waiting for a person.
from config.admin_tools import EMPTY
from referrals.models import (
    Applicant,
    Referral,
)
from referrals.services.operations import referral_cancel, referral_retry

# What the queue summary counts: referrals still on their way, and the dead ones waiting for a person.
QUEUE_STATUSES = (*Referral.OPEN, Referral.Status.FAILED)
ATTEMPTS_SHOWN = 20  # newest attempts per dispatch, on the dispatch and the referral pages
CALLBACKS_SHOWN = 50  # newest callbacks on a referral's page


# --- small display helpers ------------------------------------------------------------------------
def short_id(value: Any) -> str:
    return str(value)[:8]


def label(referral: Referral) -> str:
    """How a referral is named in messages: partner and id, never the person."""
    return f"{referral.partner.code} {short_id(referral.pk)}"


def referral_link(referral_id) -> SafeString:
    # Every role that sees a dispatch, a callback or a loan may also see referrals.
    return format_html(
        '<a class="referral-link" href="{}">{}</a>',
        reverse("admin:referrals_referral_change", args=[referral_id]),
        short_id(referral_id),
    )


def applicant_text(applicant: Applicant) -> str:
    return f"{applicant.name_masked} · {applicant.external_id}"


def age_text(since, now=None) -> str:
    if since is None:
        return EMPTY
    return timesince(since, now or timezone.now(), depth=2)


def html_table(css_class: str, headers: list, rows: list[tuple], row_format: str) -> SafeString:
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join("", row_format, rows)
    return format_html('<table class="{}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', css_class, head, body)


def uuid_or_none(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


# --- operations: buttons that lead to a confirmation page that calls a service ----------------------
@dataclasses.dataclass(frozen=True)
class Operation:
    """One button on a referral: the service it calls, when it applies, and who may press it."""

    name: str
    label: Any
    permission: str
    applies: Callable[[Referral], bool]
    run: Callable[..., Referral]  # run(actor=, referral=, reason=)
    explanation: Any
    needs_reason: bool = False


OPERATIONS = {
    op.name: op
    for op in (
        Operation(
            "retry",
            _("Retry"),
            "referrals.retry_referral",
            lambda r: r.status == Referral.Status.FAILED,
            lambda *, actor, referral, reason: referral_retry(actor=actor, referral=referral),
            _(
                "The failed call is tried again at once, with the same idempotency key (the partner "
                "recognises a repeated application). The consent is checked again before anything is sent."
            ),
        ),
        Operation(
            "cancel",
            _("Cancel referral"),
            "referrals.retry_referral",
            lambda r: r.status in Referral.OPEN or r.status == Referral.Status.FAILED,
            lambda *, actor, referral, reason: referral_cancel(actor=actor, referral=referral, reason=reason),
            _("Nothing more is sent for this referral: its pending calls are cancelled. Your reason is kept on it."),
            needs_reason=True,
        ),
    )
}


class OperationForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=180, widget=forms.Textarea(attrs={"rows": 3, "cols": 80}))

    def __init__(self, *args, needs_reason: bool, **kwargs):
        super().__init__(*args, **kwargs)
        if not needs_reason:
            del self.fields["reason"]


# --- the queue summary ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QueueCell:
    status: str
    count: int = 0
    oldest: Any = None  # created_at of the oldest referral in the cell
    age: Any = None  # timedelta
    age_text: str = ""
    url: str = ""


@dataclasses.dataclass(frozen=True)
class QueueRow:
    partner_code: str
    cells: list[QueueCell]
    total: int


def queue_summary(changelist_url: str, now=None) -> dict:
    """Per partner and status, how many referrals wait (or failed) and since when: one aggregate
    query over the ``(partner, status, created_at)`` index, limited to the queue's statuses."""
    now = now or timezone.now()
    groups = (
        Referral.objects.filter(status__in=QUEUE_STATUSES)
        .values("partner_id", "partner__code", "status")
        .annotate(count=Count("pk"), oldest=Min("created_at"))
        .order_by("partner__code", "status")
    )
    by_partner: dict[str, dict] = {}
    for group in groups:
        entry = by_partner.setdefault(group["partner__code"], {"id": group["partner_id"], "cells": {}})
        query = urlencode({"partner__id__exact": group["partner_id"], "status__exact": group["status"]})
        entry["cells"][group["status"]] = QueueCell(
            status=group["status"],
            count=group["count"],
            oldest=group["oldest"],
            age=now - group["oldest"],
            age_text=age_text(group["oldest"], now),
            url=f"{changelist_url}?{query}",
        )
    rows = []
    for code, entry in by_partner.items():
        cells = [entry["cells"].get(status, QueueCell(status=status)) for status in QUEUE_STATUSES]
        rows.append(QueueRow(partner_code=code, cells=cells, total=sum(c.count for c in cells)))
    totals = []
    for index, status in enumerate(QUEUE_STATUSES):
        present = [row.cells[index] for row in rows if row.cells[index].count]
        oldest = min((c.oldest for c in present), default=None)
        totals.append(
            QueueCell(
                status=status,
                count=sum(c.count for c in present),
                oldest=oldest,
                age=(now - oldest) if oldest else None,
                age_text=age_text(oldest, now) if oldest else "",
                url=f"{changelist_url}?{urlencode({'status__exact': status})}",
            )
        )
    labels = dict(Referral.Status.choices)
    return {
        "statuses": [(status, labels[status]) for status in QUEUE_STATUSES],
        "rows": rows,
        "totals": totals,
    }
