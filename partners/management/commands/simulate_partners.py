"""``manage.py simulate_partners``: serve every partner in the database as a protocol-v1 lender."""

from __future__ import annotations

import signal
import sys
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from partners.simulator import PartnerSimulator, SimulatorConfig


def _rate(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(value)
    return rate


class Command(BaseCommand):
    help = (
        "Run the partner simulator: /<segment>/probe, /applications, /withdrawals and /reclaims for every "
        "partner whose api_base_url ends in <segment>, checking signatures with the partner's api_secret."
    )

    def add_arguments(self, parser) -> None:
        default = urlsplit(settings.SPILLWAY_SIMULATOR_URL)
        parser.add_argument("--host", default=default.hostname or "127.0.0.1")
        parser.add_argument("--port", type=int, default=default.port or 9100)
        parser.add_argument("--probe-accept-rate", type=_rate, default=0.7, help="Share of probes answered accept.")
        parser.add_argument(
            "--application-accept-rate", type=_rate, default=0.6, help="Share of applications answered accepted."
        )
        parser.add_argument(
            "--application-pending-rate",
            type=_rate,
            default=0.0,
            help="Share of applications answered pending (decision to follow as a callback).",
        )
        parser.add_argument("--latency-ms", type=int, default=0, help="Delay before every answer.")
        parser.add_argument("--error-rate", type=_rate, default=0.0, help="Share of requests answered HTTP 500.")
        parser.add_argument("--seed", type=int, default=None, help="Make decisions and faults reproducible.")
        parser.add_argument(
            "--refresh-seconds", type=float, default=30.0, help="How often partner secrets are reloaded."
        )

    def handle(self, *args, **options) -> None:
        try:
            config = SimulatorConfig(
                probe_accept_rate=options["probe_accept_rate"],
                application_accept_rate=options["application_accept_rate"],
                application_pending_rate=options["application_pending_rate"],
                latency_ms=options["latency_ms"],
                error_rate=options["error_rate"],
                seed=options["seed"],
                refresh_seconds=options["refresh_seconds"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        simulator = PartnerSimulator(config, host=options["host"], port=options["port"])
        try:
            simulator.bind()
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc}") from exc
        simulator.credentials.reload()
        settings_line = ", ".join(f"{key}={value}" for key, value in simulator.describe().items())
        self.stdout.write(f"Partner simulator on {simulator.url} ({settings_line})")
        self.stdout.flush()
        # devstack stops its children with SIGTERM: leave through the same clean path as Ctrl-C.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        try:
            simulator.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            simulator.stop()
            self.stdout.write("Partner simulator stopped.")
