"""Recompute every consent's hash chain and every checkpoint; exit non-zero on any tampering."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from referrals.services.ledger import ledger_verify


class Command(BaseCommand):
    help = "Verify the consent ledger: hash chains, checkpoints (database and files). Exit 1 on any problem."

    def add_arguments(self, parser):
        parser.add_argument("--consent", help="Verify one consent's chain (and all checkpoints).")

    def handle(self, *args, consent=None, **options):
        report = ledger_verify(consent_id=consent)
        self.stdout.write(
            f"{report.consents} consent(s), {report.events} event(s), {report.checkpoints} checkpoint(s) checked."
        )
        if report.ok:
            self.stdout.write(self.style.SUCCESS("Ledger verified: every chain and checkpoint matches."))
            return
        self.stderr.write(self.style.ERROR(f"First broken: {report.problems[0]}"))
        for problem in report.problems[1:]:
            self.stderr.write(f"  also: {problem}")
        raise CommandError(f"ledger verification failed with {len(report.problems)} problem(s)", returncode=1)
