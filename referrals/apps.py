from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ReferralsConfig(AppConfig):
    """A referral's whole life: applicants, consents and their ledger, routing, dispatch, loans."""

    name = "referrals"
    verbose_name = _("Referrals")

    def ready(self) -> None:
        # Spillway's own metrics on /metrics: config serves them but imports no app, so the
        # collector is handed to it here, once per process.
        from config.metrics import register_collector
        from referrals.metrics import SpillwayCollector

        register_collector(SpillwayCollector())

        # Reclaim notices plug their payload, their last-moment check and their acknowledgement
        # into the outbox (referrals.services.dispatch) when the reclaim service is imported.
        from referrals.services import reclaims  # noqa: F401
