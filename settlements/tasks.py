"""Thin Celery tasks: load, call a service, return."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

# A month of a large partner takes minutes, not seconds: a longer limit than the default, still
# well inside the Redis visibility timeout (a killed worker's run is redelivered and re-run;
# drafts are replaced, approved statements are never touched).
HARD_LIMIT = settings.SPILLWAY_LONG_TASK_TIME_LIMIT
SOFT_LIMIT = max(1, HARD_LIMIT - 100)


@shared_task(name="settlements.run", soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT)
def settlement_run_task(run_id: str) -> str:
    from settlements.services.runs import run_execute

    return run_execute(run_id).status


@shared_task(name="settlements.runs_sweep")
def settlement_runs_sweep_task() -> int:
    from settlements.services.runs import runs_sweep

    return runs_sweep()
