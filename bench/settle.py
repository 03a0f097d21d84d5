"""Child process of the settlement scenario: runs the months given, prints seconds, lines, peak memory.

A process of its own, so its peak resident memory (``ru_maxrss``) is the runs' and nothing else's.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(months: list[str]) -> None:
    from bench.harness import bench_environment, setup_django

    setup_django(bench_environment())
    from django.contrib.auth.models import Group, User

    from settlements.models import SettlementRun, StatementLine
    from settlements.services.runs import run_execute, run_start

    user, _ = User.objects.get_or_create(username="bench-finance", defaults={"is_staff": True})
    user.groups.add(Group.objects.get(name="finance"))
    started = time.perf_counter()
    for month in months:
        run = run_start(period=month, user=user)
        run_execute(run.pk)
        run.refresh_from_db()
        if run.status != SettlementRun.Status.DONE:
            raise SystemExit(f"the run for {month} ended {run.status}: {run.error}")
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = StatementLine.objects.filter(statement__period__in=months).count()
    print(json.dumps({"seconds": seconds, "peak_mb": round(peak_mb, 1), "lines": lines}))


if __name__ == "__main__":
    main(sys.argv[1:])
