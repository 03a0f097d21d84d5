"""Structured logging that never carries personal data.

``mask_pii`` runs on every log line: mainland mobile numbers and resident ID numbers are masked
wherever they appear (keys' values, nested text, exception text), so a careless
``log.info("sent", phone=applicant.phone)`` still writes ``138****5678``.

structlog events and plain ``logging`` records (Django, Celery) go through the same processors
and out through one handler whose formatter (:func:`formatter`) renders them: one JSON object per
line in production (``LOG_FORMAT=json``, the default when ``DEBUG`` is off) — ``timestamp`` (UTC,
ISO 8601), ``level``, ``logger``, ``event``, the bound context (``request_id``, ``task_name``,
``task_id``: ``config.requestid``) and the event's own keys — or readable aligned lines on a
developer's console (``LOG_FORMAT=console``).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

PHONE_RE = re.compile(r"(?<![0-9A-Za-z])(1[3-9]\d)(\d{4})(\d{4})(?![0-9A-Za-z])")
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


# ProcessorFormatter's bookkeeping (the LogRecord itself), not text of the event.
_META_KEYS = frozenset({"_record", "_from_structlog"})


def mask_pii(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: mask personal data in every value of the event."""
    return {key: value if key in _META_KEYS else _mask(value) for key, value in event_dict.items()}


# What every line gets, from structlog or from plain logging; masking last, over all of it.
_SHARED: list = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
    mask_pii,
]


def configure_structlog() -> None:
    """structlog hands its (masked) events to the standard library's handlers (LOGGING)."""
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


_LEADING_KEYS = ("timestamp", "level", "logger", "event", "request_id")


def _leading_keys_first(logger: Any, method_name: str, event_dict: dict) -> dict:
    """The keys every line has, first, so JSON lines read well in a terminal too."""
    leading = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    return {**leading, **event_dict}


def formatter(json: bool = True) -> logging.Formatter:
    """The LOGGING formatter: one JSON object per line, or a readable console line."""
    processors: list = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        processors += [_leading_keys_first, structlog.processors.JSONRenderer(ensure_ascii=False)]
    else:
        processors.append(
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback)
        )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,  # plain logging records: the same context, level, time and masking
        processors=processors,
    )


class MaskingFilter(logging.Filter):
    """A stdlib logging filter doing the same for plain ``logging`` records (Django, Celery), for
    any handler — ours masks again in the formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            return True  # a structlog event on its way to ProcessorFormatter, masked already
        record.msg = mask_text(record.getMessage())
        record.args = ()
        return True
