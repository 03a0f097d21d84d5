"""Sampling profiles of the bench's own processes with py-spy, summed into "where the time goes".

``python -m bench --profile`` records every worker (and gunicorn) process during a scenario's
timed window; each recording is py-spy's collapsed-stack ("raw") format in ``var/bench/``, and the
summary printed after the scenario is the share of samples per project function (inclusive — the
function and everything it called) and per leaf (self time), plus the share spent in Django's ORM,
in psycopg waiting on PostgreSQL, in the HTTP client and in Celery/kombu. Render a flame graph
from a file with ``py-spy``'s own tools or https://www.speedscope.app.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.harness import OUT_DIR, ROOT

# Which library a frame belongs to, by its file path: the coarse split printed first.
BUCKETS = (
    ("PostgreSQL round trips (psycopg)", "(psycopg/"),
    ("Django ORM (query building, model instances)", "(django/db/"),
    ("HTTP client (requests, urllib3)", "(urllib3/"),
    ("Redis client (broker, cache, rate limits)", "(redis/"),
    ("Celery and kombu", "(kombu/"),
    ("encryption and hashing", "(cryptography/"),
    ("Django REST framework", "(rest_framework/"),
    ("structlog", "(structlog/"),
)


@contextlib.contextmanager
def recording(name: str, pids: list[int]) -> Iterator[list[Path]]:
    """py-spy on each pid (and its children) for the duration of the block; yields the output files."""
    files: list[Path] = []
    spies: list[subprocess.Popen] = []
    executable = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if os.environ.get("BENCH_PROFILE", "") != "1" or executable is None:
        yield files
        return
    for pid in pids:
        path = OUT_DIR / f"profile-{name}-{pid}.txt"
        files.append(path)
        command = [executable, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--subprocesses",
                   "--nonblocking", "--output", str(path)]  # fmt: skip
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        spies.append(spy)
    time.sleep(1.0)  # py-spy attaches
    try:
        yield files
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()


def children(word: str) -> list[int]:
    """Our direct child processes whose command line contains ``word`` (e.g. gunicorn's master)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and word in (stat.parent / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(stat.parent.name))
    return found


def summarize(files: list[Path], *, top: int = 12) -> str:
    """The printed breakdown of the recorded samples (idle threads excluded)."""
    stacks: Counter = Counter()
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
    busy = Counter({s: n for s, n in stacks.items() if not _idle(s)})
    total = sum(busy.values())
    if not total:
        return "  (no samples: set BENCH_PROFILE=1 and install py-spy)"
    buckets: Counter = Counter()
    inclusive: Counter = Counter()
    leaves: Counter = Counter()
    for stack, n in busy.items():
        frames = stack.split(";")
        for label, marker in BUCKETS:
            if any(marker in frame for frame in frames):
                buckets[label] += n
                break
        seen = set()
        for frame in frames:
            if _ours(frame) and (name := _short(frame)) not in seen:
                seen.add(name)
                inclusive[name] += n
        leaves[_short(frames[-1])] += n
    lines = [f"  {total:,} busy samples; outermost library per sample (first match):"]
    lines += [f"    {n / total:6.1%}  {label}" for label, n in buckets.most_common()]
    lines += ["  project functions, inclusive:"]
    lines += [f"    {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["  leaves (self time):"]
    lines += [f"    {n / total:6.1%}  {name}" for name, n in leaves.most_common(top)]
    return "\n".join(lines)


def _idle(stack: str) -> bool:
    last = stack.rsplit(";", 1)[-1]
    return any(word in last for word in ("wait (threading", "select (", "poll (", "_wait_for_tstate_lock", "sleep"))


def _ours(frame: str) -> bool:
    return any(f"({part}/" in frame for part in ("referrals", "partners", "settlements", "config"))


def _short(frame: str) -> str:
    """``function (path/to/file.py:123)`` → ``function (file.py)``."""
    name, _, where = frame.partition(" (")
    path = where.split(":", 1)[0]
    with contextlib.suppress(ValueError):
        path = str(Path(path).relative_to(ROOT))
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    return f"{name} ({path})"
