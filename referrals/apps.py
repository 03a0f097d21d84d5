from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ReferralsConfig(AppConfig):
    """A referral's whole life: applicants, consents and their ledger, routing, dispatch, loans."""

    name = "referrals"
    verbose_name = _("Referrals")
