"""The Celery app, configured from the ``CELERY_*`` settings.

Messages carry ids only and are JSON. ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1 means a
worker killed mid-task leaves its message to be redelivered rather than lost; the database rows
stay the system of record, and sweepers re-enqueue anything a lost message left behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

from config import requestid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("spillway")
app.config_from_object("django.conf:settings", namespace="CELERY")

# The filesystem broker (laptop default) needs its folders to exist before the first publish.
for _folder in {
    app.conf.broker_transport_options.get("data_folder_in"),
    app.conf.broker_transport_options.get("processed_folder"),
    app.conf.broker_transport_options.get("control_folder"),
} - {None}:
    Path(_folder).mkdir(parents=True, exist_ok=True)

app.autodiscover_tasks()

# The web request's id travels in each message's headers and is bound again in the worker.
requestid.connect_signals()


def enqueue(task, *args) -> bool:
    """Send ``task`` for work the database already records (an outbox row, a stored callback, a job).

    Called after a commit: if the broker cannot be reached (Redis restarting), the request that
    committed must not answer 500 for work that is safely recorded — the sweepers (``dispatch_sweep``,
    ``callbacks_sweep``, ``jobs_sweep``, ``runs_sweep``) send it once the broker is back. Returns
    whether the message went out."""
    import structlog
    from kombu.exceptions import OperationalError

    try:
        task.delay(*args)
    except (OperationalError, ConnectionError, OSError) as exc:
        structlog.get_logger(__name__).warning("enqueue_failed", task=task.name, error=str(exc)[:200])
        return False
    return True
