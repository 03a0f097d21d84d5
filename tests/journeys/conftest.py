"""Set-up shared by the mornings: a 1440×1000 window, a fresh dashboard, and no Celery worker —
the dispatches handed to one are recorded, and settlement runs and background jobs run in threads
of this process, as a worker would run them."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connections

from config import dashboard
from referrals.services import jobs
from referrals.tasks import dispatch_send_task
from settlements.services import runs
from tests.journeys.steps import VIEWPORT


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    """Every page of a morning, the second person's too, in the window the docs' screenshots show."""
    return {**browser_context_args, "viewport": VIEWPORT}


@pytest.fixture(autouse=True)
def _fresh_dashboard():
    """The panels are cached a minute: each morning sees its own data, not the last test's."""
    dashboard.clear()
    yield
    dashboard.clear()


@pytest.fixture(autouse=True)
def enqueued(monkeypatch) -> list[int]:
    """The dispatch ids handed to a worker (intake's probes, a retry…), in order, instead of the broker."""
    ids: list[int] = []
    monkeypatch.setattr(dispatch_send_task, "delay", ids.extend)
    return ids


class Worker:
    """Runs each queued id in a thread once its transaction has committed (``on_commit`` calls
    the enqueue function); an exception in a thread is kept for the test to report."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def enqueuer(self, run: Callable) -> Callable:
        def enqueue(object_id) -> None:
            thread = threading.Thread(target=self._run, args=(run, object_id), name=f"worker-{object_id}", daemon=True)
            self.threads.append(thread)
            thread.start()

        return enqueue

    def _run(self, run: Callable, object_id) -> None:
        try:
            run(object_id)
        except BaseException as exc:  # reported by the test, not by threading's excepthook
            self.errors.append(exc)
        finally:
            connections.close_all()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self.threads), "a background task did not finish"
        assert not self.errors, self.errors


@pytest.fixture
def worker(monkeypatch, settings, tmp_path):
    """Settlement runs and background jobs (evidence exports…) run in threads of this process; the
    threads are joined before the database is emptied."""
    settings.SPILLWAY_JOB_DIR = tmp_path / "jobs"
    worker = Worker()
    monkeypatch.setattr(runs, "_enqueue", worker.enqueuer(runs.run_execute))
    monkeypatch.setattr(jobs, "_enqueue", worker.enqueuer(jobs.job_execute))
    yield worker
    worker.join()
