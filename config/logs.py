"""Structured logging that never carries personal data.

``mask_pii`` runs on every structlog event: mainland mobile numbers and resident ID numbers are
masked wherever they appear in the event (keys' values, nested text), so a careless
``log.info("sent", phone=applicant.phone)`` still writes ``138****5678``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import structlog

PHONE_RE = re.compile(r"(?<!\d)(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
NATIONAL_ID_RE = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8})(\d{3}[0-9Xx])(?![0-9A-Za-z])")


def mask_text(text: str) -> str:
    """Mask every phone number and ID number in free text."""
    text = NATIONAL_ID_RE.sub(lambda m: f"{m.group(1)}********{m.group(3)}", text)
    return PHONE_RE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask(v) for v in value)
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        masked = mask_text(str(value))
        return value if masked == str(value) else masked
    return mask_text(str(value))


def mask_pii(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: mask personal data in every value of the event."""
    return {key: _mask(value) for key, value in event_dict.items()}


def configure_structlog() -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_pii,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class MaskingFilter(logging.Filter):
    """A stdlib logging filter doing the same for plain ``logging`` records (Django, Celery)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = ()
        return True
