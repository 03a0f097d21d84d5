"""The broker down while a request commits: the request answers as usual, the work waits for the sweepers.

Found by ``make chaos``: with Redis restarting, a withdrawal, an intake or a callback committed and
then answered 500 because sending the task after the commit raised — the caller retried work that
had been done. The database rows are the system of record; the sweepers send what was not sent.
"""

from __future__ import annotations

import datetime

import pytest
from kombu.exceptions import OperationalError

from config.celery import enqueue
from referrals.models import CallbackEvent, Consent, Dispatch
from referrals.services.callbacks import callbacks_sweep
from referrals.services.dispatch import dispatch_sweep
from referrals.tasks import callback_apply_task, dispatch_send_task
from tests.referrals import test_callbacks
from tests.referrals.test_callbacks import event, post

contracts = test_callbacks.contracts  # the same two approved contracts (a fixture)


class Unreachable:
    """What ``.delay`` meets while Redis restarts."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.fixture
def broker_down(monkeypatch):
    down = Unreachable()
    for task in (dispatch_send_task, callback_apply_task):
        monkeypatch.setattr(task, "delay", down)
    return down


def test_enqueue_reports_a_broker_it_cannot_reach_instead_of_raising(broker_down, caplog):
    assert enqueue(dispatch_send_task, [1]) is False
    assert broker_down.calls == 1


def test_intake_and_withdrawal_answer_as_usual_and_the_sweeper_sends_the_probes_later(
    origination_api, payload, contracts, broker_down, django_capture_on_commit_callbacks, monkeypatch
):
    with django_capture_on_commit_callbacks(execute=True):
        response = origination_api.post("/api/v1/applicants/", payload(), format="json")
    assert response.status_code == 201, response.content
    assert broker_down.calls == 1  # the probes' message did not go out
    assert set(Dispatch.objects.values_list("kind", "status")) == {("probe", "pending")}

    # The broker is back: the sweeper finds the probes nobody sent.
    sent = []
    monkeypatch.setattr(dispatch_send_task, "delay", lambda ids: sent.append(sorted(ids)))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    dispatch_sweep(now=later)
    assert sorted(i for ids in sent for i in ids) == sorted(Dispatch.objects.values_list("pk", flat=True))

    monkeypatch.setattr(dispatch_send_task, "delay", broker_down)
    consent = Consent.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = origination_api.post(
            f"/api/v1/consents/{consent.pk}/withdraw/", {"channel": "app", "reason": "不再需要"}, format="json"
        )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "withdrawn"
    consent.refresh_from_db()
    assert consent.status == "withdrawn"


def test_a_callback_is_answered_200_and_applied_by_the_sweeper(
    client, origination_api, payload, contracts, broker_down, django_capture_on_commit_callbacks, monkeypatch
):
    from referrals.models import Referral

    origination_api.post("/api/v1/applicants/", payload(), format="json")
    referral = Referral.objects.filter(partner__code="PARTNER_A").get()
    body = event("application.rejected", referral.pk, {"application_id": "A-1", "reason": "risk_model"})
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, "PARTNER_A", body)
    assert response.status_code == 200, response.content
    stored = CallbackEvent.objects.get(event_id=body["event_id"])
    assert stored.status == CallbackEvent.Status.RECEIVED

    queued = []
    monkeypatch.setattr(callback_apply_task, "delay", queued.append)
    callbacks_sweep(now=stored.received_at + datetime.timedelta(minutes=2))
    assert queued == [stored.pk]


def test_a_withdrawal_goes_through_while_the_rate_limiters_cache_is_unreachable(
    origination_api, payload, contracts, monkeypatch, caplog
):
    """Found by ``make chaos``: with Redis restarting, the API throttle's cache read answered 500."""
    from django.core.cache import cache
    from redis.exceptions import ConnectionError as RedisConnectionError

    response = origination_api.post("/api/v1/applicants/", payload(), format="json")
    assert response.status_code == 201, response.content
    consent = Consent.objects.get()

    def unreachable(*args, **kwargs):
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(cache, "get", unreachable)
    response = origination_api.post(
        f"/api/v1/consents/{consent.pk}/withdraw/", {"channel": "app", "reason": "不再需要"}, format="json"
    )
    assert response.status_code == 200, response.content
    consent.refresh_from_db()
    assert consent.status == "withdrawn"
