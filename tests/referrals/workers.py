"""Real Celery worker processes for the dispatch integration tests, each run on a queue of its own.

``celery -A tests.referrals.workers:app worker`` is the project's Celery app with one change: when
``SPILLWAY_TEST_CELERY_QUEUE`` is set, that queue is the default one, so whatever the worker enqueues
itself (an application after an accepted probe, say) stays on the test's queue. Nobody else's worker
(``make worker``, another test run on the same Redis) takes the test's messages, and the test's
worker takes nobody else's.

The worker must use the database the test uses: under pytest-django that is the test database,
whose name exists only at test time — :func:`database_url` reads it then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from config.celery import app

QUEUE_ENV = "SPILLWAY_TEST_CELERY_QUEUE"
ROOT = Path(__file__).resolve().parents[2]

if os.environ.get(QUEUE_ENV):  # only in the worker process started below
    app.conf.task_default_queue = os.environ[QUEUE_ENV]


def wait_for(predicate, timeout: float, what: str, *, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def database_url() -> str:
    """A DATABASE_URL for the database this test runs against (the test database)."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith(".postgresql"):  # Django's backend or its django-prometheus twin
        raise RuntimeError("a worker process can share only a PostgreSQL test database")
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{quote(db['NAME'], safe='')}"


def new_queue() -> str:
    return f"spillway-test-{uuid.uuid4().hex[:10]}"


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    queue: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 40) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            return " ready." in self.output()

        wait_for(ready, timeout, "the worker to start", poll=0.1)

    def kill9(self) -> None:
        """``kill -9``: no warm shutdown, no ack, no rollback on our side — the process is gone."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_worker(queue: str, log: Path, **env: str) -> Worker:
    """``celery worker --pool solo`` on ``queue`` as a separate OS process, on the test database.

    With the solo pool the process that runs the task is the process started here, so
    :meth:`Worker.kill9` kills the very process that is talking to the partner.
    """
    from django.conf import settings

    environment = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONUNBUFFERED": "1",
        QUEUE_ENV: queue,
        **env,
    }
    name = f"{queue}-{uuid.uuid4().hex[:4]}@%h"
    with log.open("a") as out:
        proc = subprocess.Popen(  # noqa: S603 — our own interpreter and arguments
            [sys.executable, "-m", "celery", "-A", "tests.referrals.workers:app", "worker", "-n", name, "-Q", queue,
             "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Worker(proc, log, queue)


def send_to(queue: str):
    """A stand-in for ``dispatch_send_task.delay`` in the test process that publishes to ``queue``."""
    from referrals.tasks import dispatch_send_task

    def delay(*args, **kwargs):
        return dispatch_send_task.apply_async(args, kwargs, queue=queue)

    return delay


def purge(queue: str) -> None:
    """Drop what is left of the test's queue on the broker (a killed worker leaves its message
    unacknowledged: kombu would put it back on this queue, for no one, an hour later)."""
    from django.conf import settings

    url = settings.CELERY_BROKER_URL
    if not url.startswith("redis://"):
        return  # the worker tests run on Redis only
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.delete(queue)
        for tag, raw in client.hscan_iter("unacked"):
            try:
                _message, _exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if routing_key == queue:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()
