"""``manage.py simulate_partners``: serve every partner in the database as a protocol-v1 lender."""

from __future__ import annotations

import argparse
import signal
import sys
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from partners.simulator import DowntimeWindow, PartnerSimulator, SimulatorConfig
from partners.simulator_callbacks import CallbackConfig


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate is between 0 and 1, not {value!r}")
    return rate


def _window(value: str) -> DowntimeWindow:
    try:
        return DowntimeWindow.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class Command(BaseCommand):
    help = (
        "Run the partner simulator: /<segment>/probe, /applications, /withdrawals and /reclaims for every "
        "partner whose api_base_url ends in <segment>, checking signatures with the partner's api_secret; "
        "accepted applications live on as signed callbacks to Spillway, and GET /_sim/records lists what "
        "the partners received and sent."
    )

    def add_arguments(self, parser) -> None:
        default = urlsplit(settings.SPILLWAY_SIMULATOR_URL)
        parser.add_argument("--host", default=default.hostname or "127.0.0.1")
        parser.add_argument("--port", type=int, default=default.port or 9100)
        parser.add_argument("--seed", type=int, default=None, help="Make decisions, faults and loans reproducible.")
        parser.add_argument(
            "--refresh-seconds", type=float, default=30.0, help="How often partner secrets are reloaded."
        )

        decisions = parser.add_argument_group("decisions")
        decisions.add_argument("--probe-accept-rate", type=_rate, default=0.7, help="Share of probes answered accept.")
        decisions.add_argument(
            "--application-accept-rate", type=_rate, default=0.6, help="Share of applications answered accepted."
        )
        decisions.add_argument(
            "--application-pending-rate",
            type=_rate,
            default=0.0,
            help="Share of applications answered pending (decision to follow as a callback).",
        )

        faults = parser.add_argument_group("faults (drawn per Idempotency-Key or referral and attempt)")
        faults.add_argument("--latency-ms", type=int, default=0, help="Delay before every answer.")
        faults.add_argument("--error-rate", type=_rate, default=0.0, help="Share answered 500/502/503.")
        faults.add_argument("--throttle-rate", type=_rate, default=0.0, help="Share answered 429.")
        faults.add_argument(
            "--timeout-rate", type=_rate, default=0.0, help="Share held for --timeout-hold-ms before the answer."
        )
        faults.add_argument(
            "--timeout-after-accept-rate",
            type=_rate,
            default=0.5,
            help="Of the timeouts, the share that happen after the request was processed (application stored).",
        )
        faults.add_argument(
            "--timeout-hold-ms", type=int, default=5000, help="How long a timeout holds (past the caller's timeout)."
        )
        faults.add_argument(
            "--down",
            type=_window,
            action="append",
            default=[],
            metavar="PARTNER_CODE:START_S:DURATION_S",
            help="A downtime window, relative to start (repeatable).",
        )
        faults.add_argument(
            "--down-mode", choices=("503", "drop"), default="503", help="Answer 503, or close the connection."
        )

        callbacks = parser.add_argument_group("callbacks to Spillway")
        callbacks.add_argument(
            "--spillway-url",
            default=getattr(settings, "SPILLWAY_PUBLIC_URL", None) or "http://127.0.0.1:8000",
            help="Where callbacks go (default: SPILLWAY_PUBLIC_URL, else http://127.0.0.1:8000).",
        )
        callbacks.add_argument("--no-callbacks", action="store_true", help="Never call Spillway back.")
        callbacks.add_argument(
            "--month-seconds", type=float, default=10.0, help="Real seconds per loan month (default 10)."
        )
        callbacks.add_argument("--returned-rate", type=_rate, default=0.03, help="Accepted, then returned.")
        callbacks.add_argument("--approval-rate", type=_rate, default=0.7, help="Accepted, then a loan approved.")
        callbacks.add_argument("--disbursement-rate", type=_rate, default=0.95, help="Approved, then disbursed.")
        callbacks.add_argument("--late-rate", type=_rate, default=0.05, help="Instalments paid late.")
        callbacks.add_argument("--fpd-rate", type=_rate, default=0.04, help="Loans never paying instalment 1.")
        callbacks.add_argument("--default-rate", type=_rate, default=0.03, help="Loans defaulting later.")
        callbacks.add_argument(
            "--callback-duplicates", type=int, default=1, help="Deliver each callback 1..N times (default 1)."
        )
        callbacks.add_argument(
            "--callback-reorder",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="Delay each delivery by up to SECONDS, shuffling the order (default 0: in order).",
        )
        callbacks.add_argument(
            "--callback-stale-rate", type=_rate, default=0.0, help="Events also sent with a 10-minute-old timestamp."
        )
        callbacks.add_argument(
            "--callback-bad-signature-rate",
            type=_rate,
            default=0.0,
            help="Events also sent signed with a wrong secret.",
        )
        callbacks.add_argument(
            "--callback-retries", type=int, default=4, help="Retries after a 5xx or connection error (4xx: none)."
        )

    def handle(self, *args, **options) -> None:
        try:
            callbacks = None
            if not options["no_callbacks"]:
                callbacks = CallbackConfig(
                    spillway_url=options["spillway_url"],
                    month_seconds=options["month_seconds"],
                    returned_rate=options["returned_rate"],
                    approval_rate=options["approval_rate"],
                    disbursement_rate=options["disbursement_rate"],
                    late_rate=options["late_rate"],
                    fpd_rate=options["fpd_rate"],
                    default_rate=options["default_rate"],
                    duplicates=options["callback_duplicates"],
                    reorder_seconds=options["callback_reorder"],
                    stale_rate=options["callback_stale_rate"],
                    bad_signature_rate=options["callback_bad_signature_rate"],
                    retries=options["callback_retries"],
                )
            config = SimulatorConfig(
                probe_accept_rate=options["probe_accept_rate"],
                application_accept_rate=options["application_accept_rate"],
                application_pending_rate=options["application_pending_rate"],
                latency_ms=options["latency_ms"],
                error_rate=options["error_rate"],
                throttle_rate=options["throttle_rate"],
                timeout_rate=options["timeout_rate"],
                timeout_after_accept_rate=options["timeout_after_accept_rate"],
                timeout_hold_ms=options["timeout_hold_ms"],
                downtime=tuple(options["down"]),
                down_mode=options["down_mode"],
                seed=options["seed"],
                refresh_seconds=options["refresh_seconds"],
                callbacks=callbacks,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        simulator = PartnerSimulator(config, host=options["host"], port=options["port"])
        try:
            simulator.bind()
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc}") from exc
        simulator.credentials.reload()
        described = simulator.describe()
        callback_settings = described.pop("callbacks")
        described["downtime"] = [
            f"{w['partner_code']}:{w['start_s']:g}:{w['duration_s']:g}" for w in described["downtime"]
        ]
        self.stdout.write(
            f"Partner simulator on {simulator.url} ({', '.join(f'{k}={v}' for k, v in described.items())})"
        )
        if callback_settings:
            line = ", ".join(f"{k}={v}" for k, v in callback_settings.items())
            self.stdout.write(f"Callbacks to Spillway ({line})")
        else:
            self.stdout.write("Callbacks to Spillway: off")
        self.stdout.write(f"Records: {simulator.url}/_sim/records")
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
