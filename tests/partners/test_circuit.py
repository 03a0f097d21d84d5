"""The per-partner request budget (shared through the cache) and the circuit breaker's states."""

from __future__ import annotations

import datetime
import time

from django.core.cache import cache
from django.utils import timezone

from partners.circuit import circuit_admit, circuit_failure, circuit_reset, circuit_success, rate_limit_wait
from partners.models import PartnerCircuit
from tests.factories import PartnerFactory


def test_rate_limit_gives_n_slots_per_second_then_waits_or_refuses(db):
    cache.clear()
    partner = PartnerFactory(code="RATE_A")
    # Start at the beginning of a second so the three calls fall into the same window.
    time.sleep(1 - (time.time() % 1))
    assert rate_limit_wait(partner.pk, 2, max_wait=0)
    assert rate_limit_wait(partner.pk, 2, max_wait=0)
    assert not rate_limit_wait(partner.pk, 2, max_wait=0)  # no slot left this second, and no waiting allowed
    started = time.monotonic()
    assert rate_limit_wait(partner.pk, 2, max_wait=2)  # waits for the next second
    assert time.monotonic() - started > 0.05


def test_circuit_opens_after_the_threshold_and_one_trial_gets_through(db, settings):
    settings.SPILLWAY_CIRCUIT_FAILURES = 2
    partner = PartnerFactory(code="CIRCUIT_A")
    now = timezone.now()
    assert circuit_admit(partner.pk, now=now) is None
    assert circuit_failure(partner.pk, "HTTP 503", now=now) is False
    assert circuit_failure(partner.pk, "HTTP 503", now=now) is True
    assert PartnerCircuit.objects.get(partner=partner).state == "open"
    assert circuit_admit(partner.pk, now=now) is not None  # open: wait
    later = now + datetime.timedelta(seconds=settings.SPILLWAY_CIRCUIT_COOLDOWN_SECONDS + 1)
    assert circuit_admit(partner.pk, now=later) is None  # half-open: this caller is the trial
    assert circuit_admit(partner.pk, now=later) is not None  # everyone else keeps waiting
    circuit_success(partner.pk)
    assert PartnerCircuit.objects.get(partner=partner).state == "closed"


def test_reset_closes_the_circuit(db):
    partner = PartnerFactory(code="CIRCUIT_B")
    PartnerCircuit.objects.create(
        partner=partner, consecutive_failures=7, open_until=timezone.now() + datetime.timedelta(hours=1)
    )
    circuit_reset(partner.pk)
    circuit = PartnerCircuit.objects.get(partner=partner)
    assert (circuit.state, circuit.consecutive_failures) == ("closed", 0)
