"""``manage.py devstack``: the whole app on a laptop — web, Celery worker with beat, partner simulator.

Each part runs as a child process with this same Python; their output is interleaved line by line,
each line prefixed with the child's name. Ctrl-C (or SIGTERM) stops them all and exits 0; if one of
them dies on its own, the others are stopped too and the command exits non-zero, so a broken stack
never looks half-alive.

The children get their own process groups: the terminal's Ctrl-C reaches only this command, which
then stops the children in order (SIGTERM, then SIGKILL after a grace period) instead of every
process reacting to the signal at once.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: Sequence[str]
    process: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    """Start processes, prefix their output, and stop them all together."""

    def __init__(
        self,
        children: Sequence[tuple[str, Sequence[str]]],
        *,
        out: TextIO,
        grace_seconds: float = 10.0,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.children = [Child(name, list(argv)) for name, argv in children]
        self.out = out
        self.grace_seconds = grace_seconds
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._width = max((len(child.name) for child in self.children), default=0)
        self._lock = threading.Lock()
        # Set to cut the grace period short (a second Ctrl-C).
        self.hurry = threading.Event()

    def write(self, text: str) -> None:
        """Write whole lines to the shared output without interleaving them with a child's."""
        with self._lock:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()

    def _pump(self, child: Child) -> None:
        assert child.process is not None
        assert child.process.stdout is not None
        for line in child.process.stdout:
            self.write(f"{child.name.ljust(self._width)} | {line.rstrip()}")

    def start(self) -> None:
        for child in self.children:
            child.process = subprocess.Popen(  # noqa: S603 — our own commands, no shell
                child.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                cwd=self.cwd,
                env=self.env,
                # Own process group: Ctrl-C in the terminal reaches only the supervisor.
                process_group=0 if os.name == "posix" else None,
            )
            child.reader = threading.Thread(target=self._pump, args=(child,), name=f"pump-{child.name}", daemon=True)
            child.reader.start()

    def first_exited(self) -> Child | None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                return child
        return None

    def run(
        self, stop: threading.Event, *, tick: Callable[[], None] | None = None, interval: float = 0.2
    ) -> Child | None:
        """Start everything and wait until ``stop`` is set or a child exits; then stop them all.

        Returns the child that exited on its own (``None`` after a requested stop).
        """
        self.start()
        failed: Child | None = None
        try:
            while not stop.is_set():
                failed = self.first_exited()
                if failed is not None:
                    break
                if tick is not None:
                    tick()
                stop.wait(interval)
        finally:
            self.stop_all()
        return failed

    def stop_all(self) -> None:
        """SIGTERM every running child, wait up to the grace period (or until :attr:`hurry` is set),
        then SIGKILL the process group of any that is still there."""
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            child.process.terminate()
        deadline = time.monotonic() + self.grace_seconds
        while running and time.monotonic() < deadline and not self.hurry.is_set():
            time.sleep(0.05)
            running = [c for c in running if c.process.poll() is None]
        for child in running:
            if child.process.poll() is None:
                self.write(f"{child.name.ljust(self._width)} | still running; killing it")
                self._kill(child)
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                self._kill(child)
            if child.reader is not None:
                child.reader.join(timeout=2)
            if child.process is not None and child.process.stdout is not None:
                child.process.stdout.close()

    @staticmethod
    def _kill(child: Child) -> None:
        assert child.process is not None
        try:
            if os.name == "posix":
                # The whole group: a Celery worker's pool processes must not outlive it.
                os.killpg(child.process.pid, signal.SIGKILL)
            else:
                child.process.kill()
        except ProcessLookupError:
            pass
        child.process.wait(timeout=5)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Command(BaseCommand):
    help = "Run the web app, a Celery worker with embedded beat and the partner simulator; Ctrl-C stops all."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="Port of the web app (default 8000).")
        parser.add_argument(
            "--grace",
            type=float,
            default=10.0,
            help="Seconds to wait for children to stop before killing them (a second Ctrl-C kills at once).",
        )

    def child_commands(self, port: int) -> list[tuple[str, list[str]]]:
        manage = str(settings.BASE_DIR / "manage.py")
        simulator = urlsplit(settings.SPILLWAY_SIMULATOR_URL)
        return [
            ("web", [sys.executable, manage, "runserver", f"127.0.0.1:{port}", "--noreload"]),
            (
                "worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "-B",
                    "--loglevel",
                    "INFO",
                    # Threads: dispatch waits on partners' HTTP answers, so many calls stay in flight.
                    "--pool",
                    "threads",
                    "--concurrency",
                    "16",
                ],
            ),
            (
                "simulator",
                [
                    sys.executable,
                    manage,
                    "simulate_partners",
                    "--host",
                    simulator.hostname or "127.0.0.1",
                    "--port",
                    str(simulator.port or 9100),
                    # Callbacks go back to this web server.
                    "--spillway-url",
                    f"http://127.0.0.1:{port}",
                    # Demo faults, so retries, returns and defaults show up within minutes.
                    "--error-rate",
                    "0.05",
                    "--returned-rate",
                    "0.1",
                ],
            ),
            # The lender's origination system, played for the demo: applicants through the API.
            (
                "origination",
                [
                    sys.executable,
                    manage,
                    "demo_traffic",
                    "--api",
                    f"http://127.0.0.1:{port}",
                    "--every",
                    "2",
                    "--withdraw-rate",
                    "0.1",
                ],
            ),
        ]

    def banner(self, port: int) -> str:
        base = f"http://127.0.0.1:{port}"
        # The demo logins table belongs to the partners app's seed_demo; the ground floor (config)
        # imports no app, so it asks for the table through the command instead of importing it.
        logins = io.StringIO()
        try:
            call_command("seed_demo", logins_only=True, stdout=logins)
        except Exception as exc:  # the stack is still useful without the table
            logins.write(f"(demo logins unavailable: {exc})\n")
        return "\n".join(
            [
                "",
                f"Spillway is up:  admin {base}/admin/   API docs {base}/api/docs/   health {base}/health/",
                f"Partner simulator: {settings.SPILLWAY_SIMULATOR_URL}",
                "",
                logins.getvalue().rstrip(),
                "",
                "Sign-in asks for a one-time code too: the first sign-in shows a QR code for an authenticator",
                "app; without a phone, `.venv/bin/python manage.py otp_code <username>` prints the code (demo only).",
                "",
                "Ctrl-C stops everything (press it twice to skip the graceful shutdown).",
                "",
            ]
        )

    def handle(self, *args, **options) -> None:
        port: int = options["port"]
        supervisor = Supervisor(
            self.child_commands(port), out=self.stdout, grace_seconds=options["grace"], cwd=settings.BASE_DIR,
            # The demo's loans live in compressed time: look for reclaim candidates every minute
            # instead of nightly, so a reclaim can be followed end to end.
            env={"SPILLWAY_RECLAIM_SCAN_SECONDS": os.environ.get("SPILLWAY_RECLAIM_SCAN_SECONDS", "60")},
        )  # fmt: skip
        stop = threading.Event()
        received: list[str] = []

        def request_stop(signum, frame) -> None:
            received.append(signal.Signals(signum).name)
            if stop.is_set():
                supervisor.hurry.set()  # a second Ctrl-C: do not wait for a slow warm shutdown
            stop.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

        announced = False

        def announce_when_ready() -> None:
            nonlocal announced
            if not announced and _port_open("127.0.0.1", port):
                announced = True
                supervisor.write(self.banner(port))

        supervisor.write(f"Starting {', '.join(name for name, _ in self.child_commands(port))} …")
        failed = supervisor.run(stop, tick=announce_when_ready)
        if failed is not None:
            code = failed.process.returncode if failed.process is not None else None
            raise CommandError(f"{failed.name} exited with code {code}; stopped the others.", returncode=1)
        supervisor.write(f"Stopped ({', '.join(received) or 'stop requested'}).")
