from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SettlementsConfig(AppConfig):
    """Money: fee rules, monthly statements, reconciliation and exports."""

    name = "settlements"
    verbose_name = _("Settlements")
