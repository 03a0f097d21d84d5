"""``make bench``: fill the bench database to the scale, run every scenario, print one table.

    python -m bench --scale smoke            # every scenario, small: under three minutes (CI runs it)
    python -m bench --scale full             # 1,000,000 applicants: the figures of docs/benchmarks.md
    python -m bench --only verify_ledger,sweeper

The database is ``BENCH_DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/spillway_bench``),
created and migrated on first use and topped up to the scale's size; ``--fresh`` starts it again.
A scenario that fails to run is a row marked ERROR (and a non-zero exit), never a silent gap.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback

from bench.harness import (
    ROOT,
    SCALES,
    Result,
    bench_environment,
    ensure_database,
    machine,
    setup_django,
    table,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Spillway benchmarks")
    parser.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the bench database first")
    parser.add_argument("--profile", action="store_true", help="py-spy the workers and gunicorn (bench/profile.py)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero on a missed target, not only on errors")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    if args.profile:
        import os

        os.environ["BENCH_PROFILE"] = "1"
    env = bench_environment()

    started = time.perf_counter()
    ensure_database(env["DATABASE_URL"], fresh=args.fresh)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env={**_os_env(), **env}, check=True
    )
    setup_django(env)
    from bench.generate import generate
    from bench.scenarios import REGISTRY
    from referrals.models import Applicant

    have = Applicant.objects.filter(external_id__startswith="BENCH-").count()
    if have < scale.applicants:
        print(f"generating {scale.applicants - have:,} applicants (have {have:,}) …", flush=True)
        stats = generate(applicants=scale.applicants - have, log=lambda line: print(line, flush=True))
        print(f"  {stats.total:,} rows in {stats.seconds:.1f} s ({stats.total / stats.seconds:,.0f} rows/s)")
    print(f"ready in {time.perf_counter() - started:.0f} s", flush=True)

    names = [n for n in args.only.split(",") if n] or list(REGISTRY)
    results: list[Result] = []
    errors = 0
    for name in names:
        print(f"→ {name}", flush=True)
        t0 = time.perf_counter()
        try:
            results.extend(REGISTRY[name](scale, env))
        except Exception as exc:
            errors += 1
            traceback.print_exc()
            results.append(Result(f"{name}: ERROR {exc}"[:120], float("nan"), "", "", False))
        print(f"  {time.perf_counter() - t0:.1f} s", flush=True)

    print()
    print(table(results))
    path = write_json(results, scale=scale.name, machine=machine())
    print(f"\n{len(results)} rows, {sum(not r.passed for r in results)} missed; JSON: {path.relative_to(ROOT)}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if errors:
        return 2
    return 1 if args.strict and any(not r.passed for r in results) else 0


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    sys.exit(main())
