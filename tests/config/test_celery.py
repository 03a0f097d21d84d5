"""A real Celery worker process on the configured broker (filesystem by default, Redis in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client

from config.celery import app
from config.tasks import heartbeat

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def worker(tmp_path):
    """Start ``celery worker`` as a separate OS process and stop it afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}@%h"
    log = tmp_path / "worker.log"
    env = {**os.environ, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(  # noqa: S603
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-n",
                name,
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "ready." in log.read_text(), 30, "the worker to start")
        yield proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_configuration_is_safe_for_at_least_once_delivery():
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit > conf.task_soft_time_limit
    visibility = conf.broker_transport_options.get("visibility_timeout")
    if visibility is not None:
        assert visibility > conf.task_time_limit


def test_heartbeat_runs_on_a_real_worker(worker):
    _proc, log = worker
    heartbeat.delay()
    wait_for(lambda: "beat heartbeat" in log.read_text(), 30, "the heartbeat to run")
    assert "succeeded" in log.read_text()


def test_health_reports_database_cache_and_worker(worker, client, db):
    response = client.get("/health/?format=json")
    body = response.json()
    assert response.status_code == 200, body
    assert len(body) == 3
    assert all(value == "OK" for value in body.values()), body
    assert any("Ping" in key for key in body)


def test_beat_schedule_lives_in_code_and_syncs_to_the_database(db, monkeypatch):
    from django_celery_beat import schedulers
    from django_celery_beat.models import PeriodicTask

    # The scheduler closes "old" connections between ticks, which would close the test's transaction.
    monkeypatch.setattr(schedulers, "close_old_connections", lambda: None)
    schedulers.DatabaseScheduler(app=app)
    task = PeriodicTask.objects.get(name="heartbeat")
    assert task.task == "config.tasks.heartbeat"
    assert task.enabled


@pytest.mark.django_db(transaction=True)  # committed data: the request below runs in a thread of its own
def test_the_health_page_for_people_is_in_chinese():
    # /health/ is an async view; in this thread Playwright's event loop may be marked running (after
    # a browser test), where Django's sync client cannot call it: a thread of its own, as a server's.
    answer: dict = {}

    def get() -> None:
        try:
            answer["response"] = Client().get("/health/", headers={"Accept": "text/html"})
        finally:
            connections.close_all()

    thread = threading.Thread(target=get)
    thread.start()
    thread.join(timeout=60)
    response = answer["response"]
    page = response.content.decode()
    assert response["Content-Type"].startswith("text/html")
    assert "系统" in page  # 系统状态 or 系统存在故障
    assert "服务" in page
    assert "Ping" in page  # the checks are listed by name, whatever their state
