"""``flush``, aware of the consent ledger's append-only triggers.

By default it behaves exactly like Django's ``flush`` — so the triggers refuse to empty the ledger,
which is the point. Only when ``SPILLWAY_ALLOW_LEDGER_FLUSH`` is on (the test suite, which empties
the database between transactional tests) are the triggers lifted for the flush and put back after.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.commands import flush
from django.db import connections

from referrals import triggers


class Command(flush.Command):
    def handle(self, **options):
        if not getattr(settings, "SPILLWAY_ALLOW_LEDGER_FLUSH", False):
            return super().handle(**options)
        connection = connections[options["database"]]
        triggers.drop(connection)
        try:
            return super().handle(**options)
        finally:
            triggers.install(connection)
