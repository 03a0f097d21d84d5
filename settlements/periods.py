"""Settlement periods: calendar months in Asia/Shanghai, written ``YYYY-MM``."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

SHANGHAI = ZoneInfo("Asia/Shanghai")
PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Window:
    """A half-open span of time ``[start, end)``, aligned to Shanghai months."""

    start: datetime.datetime
    end: datetime.datetime

    @property
    def first_day(self) -> datetime.date:
        return self.start.astimezone(SHANGHAI).date()

    @property
    def end_day(self) -> datetime.date:
        """The first day after the window (exclusive)."""
        return self.end.astimezone(SHANGHAI).date()

    def __contains__(self, moment: datetime.datetime) -> bool:
        return self.start <= moment < self.end


def parse(period: str) -> tuple[int, int]:
    match = PERIOD.match(period or "") if isinstance(period, str) else None
    if not match or not 2000 <= int(match.group(1)) <= 2999:
        raise ValidationError({"period": [_("A period is a month written YYYY-MM (2000–2999), e.g. 2026-11.")]})
    return int(match.group(1)), int(match.group(2))


def month_start(period: str) -> datetime.datetime:
    year, month = parse(period)
    return datetime.datetime(year, month, 1, tzinfo=SHANGHAI)


def shift(period: str, months: int) -> str:
    year, month = parse(period)
    index = year * 12 + (month - 1) + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def window(first: str, last: str | None = None) -> Window:
    """The months ``first`` to ``last`` (inclusive; default: just ``first``)."""
    return Window(month_start(first), month_start(shift(last or first, 1)))


def of(moment: datetime.datetime | datetime.date) -> str:
    """The period a moment (or a Shanghai calendar day) belongs to."""
    if isinstance(moment, datetime.datetime):
        moment = moment.astimezone(SHANGHAI)
    return f"{moment.year:04d}-{moment.month:02d}"


def day_start(day: datetime.date) -> datetime.datetime:
    """Midnight of a Shanghai calendar day (a repayment's time is its ``paid_date``)."""
    return datetime.datetime(day.year, day.month, day.day, tzinfo=SHANGHAI)
