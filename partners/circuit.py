"""Per-partner protection for the partner and for us: a circuit breaker (in the database, so the
admin sees it and every worker shares it) and a request-rate limit (in the shared cache).

A partner whose calls keep failing has its circuit opened: its dispatches wait until the cool-down
passes instead of hammering it and burning their retries; then one trial call (half-open) decides.
"""

from __future__ import annotations

import datetime
import time

from django.conf import settings
from django.core.cache import cache
from django.db.models import F
from django.utils import timezone

from partners.models import PartnerCircuit


def _row(partner_id: int) -> PartnerCircuit:
    circuit, _created = PartnerCircuit.objects.get_or_create(partner_id=partner_id)
    return circuit


def circuit_admit(partner_id: int, *, now: datetime.datetime | None = None) -> datetime.datetime | None:
    """``None`` if a call to the partner may go now; otherwise when to try again.

    When the cool-down has passed, exactly one caller wins the trial (a conditional update moves
    ``open_until`` forward); the others keep waiting until the trial has answered.
    """
    now = now or timezone.now()
    circuit = _row(partner_id)
    if circuit.open_until is None:
        return None
    if circuit.open_until > now:
        return circuit.open_until
    trial_window = now + datetime.timedelta(seconds=settings.SPILLWAY_CIRCUIT_TRIAL_SECONDS)
    won = PartnerCircuit.objects.filter(partner_id=partner_id, open_until=circuit.open_until).update(
        open_until=trial_window
    )
    return None if won else trial_window


def circuit_success(partner_id: int) -> None:
    """A call succeeded: close the circuit (only writes when there is something to reset)."""
    PartnerCircuit.objects.filter(partner_id=partner_id).exclude(consecutive_failures=0, open_until=None).update(
        consecutive_failures=0, open_until=None, opened_at=None
    )


def circuit_failure(partner_id: int, error: str, *, now: datetime.datetime | None = None) -> bool:
    """A call failed in a way that counts (timeouts, 5xx, 429, refused connections).
    Returns True when this failure opened (or re-opened) the circuit."""
    now = now or timezone.now()
    _row(partner_id)
    PartnerCircuit.objects.filter(partner_id=partner_id).update(
        consecutive_failures=F("consecutive_failures") + 1, last_error=error[:300]
    )
    circuit = PartnerCircuit.objects.get(partner_id=partner_id)
    if circuit.consecutive_failures < settings.SPILLWAY_CIRCUIT_FAILURES:
        return False
    PartnerCircuit.objects.filter(partner_id=partner_id).update(
        open_until=now + datetime.timedelta(seconds=settings.SPILLWAY_CIRCUIT_COOLDOWN_SECONDS),
        opened_at=circuit.opened_at or now,
    )
    return True


def circuit_reset(partner_id: int) -> None:
    """Operations closes the circuit by hand (after the partner says it is fixed)."""
    PartnerCircuit.objects.filter(partner_id=partner_id).update(consecutive_failures=0, open_until=None, opened_at=None)


def rate_limit_wait(partner_id: int, per_second: int, *, max_wait: float = 2.0) -> bool:
    """Take one slot of the partner's per-second budget, waiting for the next second if needed.

    Shared across worker processes through the cache (Redis in production). Returns False if no
    slot came within ``max_wait`` seconds (the caller defers the call instead of blocking longer).
    """
    deadline = time.monotonic() + max_wait
    while True:
        second = int(time.time())
        key = f"spillway:rate:{partner_id}:{second}"
        cache.add(key, 0, timeout=5)
        try:
            used = cache.incr(key)
        except ValueError:  # expired between add and incr
            continue
        if used <= per_second:
            return True
        pause = (second + 1) - time.time()
        if time.monotonic() + pause > deadline:
            return False
        time.sleep(max(pause, 0.001))
