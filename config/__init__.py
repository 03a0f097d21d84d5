"""Ground floor: settings, the Celery app, URLs, encrypted fields, money and API conventions."""

from config.celery import app as celery_app

__all__ = ["celery_app"]
