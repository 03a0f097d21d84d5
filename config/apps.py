from django.apps import AppConfig


class ConfigConfig(AppConfig):
    """Hosts project-wide management commands, system checks and periodic housekeeping tasks."""

    name = "config"
    verbose_name = "Spillway"

    def ready(self) -> None:
        from config import checks, security  # checks: registers the system checks
        from config.logs import configure_structlog

        configure_structlog()
        security.connect_signals()  # sign-ins, failed sign-ins and sign-outs: logged and counted
        checks.refuse_insecure_production()
