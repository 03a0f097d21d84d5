"""``manage.py devstack`` supervises its children: prefixed output, stop together, fail together."""

from __future__ import annotations

import io
import os
import sys
import threading
import time

import pytest

from config.management.commands.devstack import Command, Supervisor

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
# Ignores SIGTERM, like a child stuck in a slow shutdown.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_until(supervisor: Supervisor, *, stop_after: float | None = None):
    stop = threading.Event()
    if stop_after is not None:
        threading.Timer(stop_after, stop.set).start()
    return supervisor.run(stop, interval=0.05)


def test_a_dying_child_stops_the_others_and_is_reported():
    out = io.StringIO()
    supervisor = Supervisor(
        [
            ("web", SLEEPER),
            ("worker", [sys.executable, "-c", "import time; time.sleep(0.5); print('boom'); raise SystemExit(3)"]),
        ],
        out=out,
    )

    failed = run_until(supervisor)

    assert failed is not None
    assert failed.name == "worker"
    assert failed.process.returncode == 3
    web = supervisor.children[0].process
    assert web.returncode is not None
    assert not alive(web.pid)
    assert "worker | boom" in out.getvalue()


def test_a_requested_stop_terminates_every_child_and_reports_no_failure():
    out = io.StringIO()
    supervisor = Supervisor([("web", SLEEPER), ("simulator", SLEEPER)], out=out)

    failed = run_until(supervisor, stop_after=1.0)

    assert failed is None
    for child in supervisor.children:
        assert child.process.returncode is not None
        assert not alive(child.process.pid)
    lines = out.getvalue().splitlines()
    assert "web       | up" in lines
    assert "simulator | up" in lines


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period():
    out = io.StringIO()
    supervisor = Supervisor([("stubborn", STUBBORN)], out=out, grace_seconds=0.5)

    failed = run_until(supervisor, stop_after=1.0)

    assert failed is None
    process = supervisor.children[0].process
    assert process.returncode == -9
    assert "still running; killing it" in out.getvalue()


def test_hurry_cuts_the_grace_period_short():
    supervisor = Supervisor([("stubborn", STUBBORN)], out=io.StringIO(), grace_seconds=60)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    threading.Timer(1.5, supervisor.hurry.set).start()

    started = time.monotonic()
    failed = supervisor.run(stop, interval=0.05)

    assert failed is None
    assert supervisor.children[0].process.returncode == -9
    assert time.monotonic() - started < 10


def test_children_are_the_web_app_a_worker_with_beat_and_the_simulator(settings):
    settings.SPILLWAY_SIMULATOR_URL = "http://127.0.0.1:9100"

    children = dict(Command().child_commands(8123))

    assert children["web"][1:] == [str(settings.BASE_DIR / "manage.py"), "runserver", "127.0.0.1:8123", "--noreload"]
    assert children["worker"][0] == sys.executable
    assert children["worker"][1:5] == ["-m", "celery", "-A", "config"]
    assert "-B" in children["worker"]
    assert children["simulator"][2:7] == ["simulate_partners", "--host", "127.0.0.1", "--port", "9100"]
    assert children["simulator"][7:9] == ["--spillway-url", "http://127.0.0.1:8123"]
    assert children["origination"][2:5] == ["demo_traffic", "--api", "http://127.0.0.1:8123"]
    assert children["worker"][children["worker"].index("--pool") + 1] == "threads"
    assert all(argv[0] == sys.executable for argv in children.values())


@pytest.mark.django_db
def test_banner_shows_the_urls_and_the_demo_logins(settings):
    settings.DEBUG = True
    from django.core.management import call_command

    from tests.factories import ensure_roles

    ensure_roles()  # an earlier transactional test's flush may have emptied the migrations' groups
    call_command("seed_demo", stdout=io.StringIO())

    banner = Command().banner(8123)

    for path in ("/admin/", "/api/docs/", "/health/"):
        assert f"http://127.0.0.1:8123{path}" in banner
    assert "compliance-demo-2026" in banner
    assert "manage.py otp_code <username>" in banner
