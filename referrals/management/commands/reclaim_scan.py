"""Run the reclaim scan now (the same work as the nightly beat task)."""

from django.core.management.base import BaseCommand

from referrals.services.reclaims import reclaims_scan


class Command(BaseCommand):
    help = "Find reclaim candidates and near misses, block cases whose rules stopped holding, hand back due ones."

    def handle(self, *args, **options):
        result = reclaims_scan()
        self.stdout.write(
            f"candidates {result.candidates}, near misses {result.near_misses}, "
            f"blocked {result.blocked}, handed back {result.reclaimed}"
        )
