"""The benchmark harness: its own database and keys, production-like settings, timing, the table.

Every scenario measures Spillway's figure and, in the same run, a baseline of the engine it sits
on (a bare ``bulk_create``, a bare SQL query, a bare hashing loop…): the machine is noisy, and the
ratio is what is compared over time. A result is a row of the table printed at the end and of the
JSON written to ``var/bench/``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "var" / "bench"
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/spillway_bench"


@dataclass(frozen=True)
class Scale:
    name: str
    applicants: int  # in the database before the read scenarios run
    intake_items: int  # applicants posted by the batch-intake scenario
    concurrent_clients: int
    concurrent_requests: int  # per client
    sweeper_stuck: int
    page_deep: int  # the "deep page" of the changelist scenario (capped by the table's size)
    timed_repeats: int  # requests per measured page


SCALES = {
    "smoke": Scale("smoke", 3_000, 400, 10, 5, 1_000, 10_000, 5),
    "full": Scale("full", 1_000_000, 20_000, 50, 40, 30_000, 10_000, 20),
}


@dataclass
class Result:
    scenario: str
    figure: float
    unit: str
    target: str  # e.g. "≥ 500" (on the figure)
    passed_figure: bool
    baseline: float | None = None
    baseline_unit: str = ""
    ratio: float | None = None
    ratio_target: str = ""
    passed_ratio: bool | None = None
    notes: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.passed_figure and self.passed_ratio is not False


def at_least(value: float, target: float) -> tuple[str, bool]:
    return f"≥ {target:g}", value >= target


def at_most(value: float, target: float) -> tuple[str, bool]:
    return f"≤ {target:g}", value <= target


def p95(samples: list[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    done: list[float] = []
    yield lambda: done[0] if done else time.perf_counter() - start
    done.append(time.perf_counter() - start)


# --- environment: a database of its own, keys of its own, DEBUG off ---------------------------
def bench_environment() -> dict[str, str]:
    """The variables every bench process (this one, gunicorn, workers) runs with.

    Keys are generated once per checkout (``var/bench/keys.json``) so data written by one run
    still decrypts in the next; DEBUG is off, as in production, without the HTTPS-only settings
    (everything runs on loopback)."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    keys_file = OUT_DIR / "keys.json"
    if keys_file.exists():
        keys = json.loads(keys_file.read_text())
    else:
        raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        keys = {
            "SECRET_KEY": secrets.token_urlsafe(50),
            "SPILLWAY_ENCRYPTION_KEYS": f"bench:{raw}",
            "SPILLWAY_BLIND_INDEX_KEY": secrets.token_urlsafe(48),
        }
        keys_file.write_text(json.dumps(keys))
    return {
        **keys,
        "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB),
        # Redis on loopback, a database of its own (scenarios purge what they leave queued).
        "CELERY_BROKER_URL": os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5"),
        "CACHE_URL": os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/6"),
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "SECURE_HSTS_SECONDS": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "LOG_LEVEL": "WARNING",
        "SPILLWAY_API_USER_RATE": "100000000/min",  # the bench measures the app, not the throttle
        "SPILLWAY_API_ANON_RATE": "100000000/min",
        "SPILLWAY_VAR_DIR": str(OUT_DIR / "var"),
    }


def ensure_database(url: str, *, fresh: bool) -> None:
    """Creates the bench database (dropping it first when ``fresh``): the ledger's triggers refuse
    TRUNCATE and DELETE, so a clean slate is a new database."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and fresh:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
            conn.execute(f'DROP DATABASE "{name}"')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def stop_process(process: subprocess.Popen) -> None:
    """Terminate, then kill if it does not exit within 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def web_server(env: dict[str, str], *, workers: int = 4, threads: int = 8, log: Path | None = None) -> Iterator[str]:
    """gunicorn serving the app on loopback (gthread workers, as docs/deployment.md runs it); its
    output goes to ``log`` when given."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--worker-class", "gthread", "--threads", str(threads), "--log-level", "warning", "--timeout", "120",
    ]  # fmt: skip
    out = log.open("w") if log else None
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/admin/login/", process)  # /health/ also pings Celery, not needed here
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        if out:
            out.close()


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before answering")
        with contextlib.suppress(requests.RequestException):
            requests.get(url, timeout=2)
            return
        time.sleep(0.3)
    raise RuntimeError(f"no answer from {url} in {timeout:.0f} s")


# --- output ---------------------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    header = ("scenario", "figure", "target", "baseline", "ratio", "ratio target", "pass")
    rows = [header]
    for r in results:
        rows.append(
            (
                r.scenario,
                f"{_num(r.figure)} {r.unit}",
                r.target,
                f"{_num(r.baseline)} {r.baseline_unit}" if r.baseline is not None else "—",
                f"{r.ratio:.2f}" if r.ratio is not None else "—",
                r.ratio_target or "—",
                "pass" if r.passed else "MISS",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 1 else f"{value:.1f}"


def write_json(results: list[Result], *, scale: str, machine: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    document = {
        "scale": scale,
        "at": stamp,
        "machine": machine,
        "results": [{**asdict(r), "passed": r.passed} for r in results],
    }
    path = OUT_DIR / f"bench-{scale}-{stamp}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False))
    (OUT_DIR / f"latest-{scale}.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
    return path


def machine() -> dict:
    import platform

    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["memory_gb"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    return info
