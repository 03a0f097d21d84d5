"""Checks on what the origination system sends: ID numbers, phones, regions."""

from __future__ import annotations

import datetime
import re

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _
from stdnum import exceptions as stdnum_errors
from stdnum.cn import ric

from config.regions import is_city, is_province

PHONE_RE = re.compile(r"^1[3-9]\d{9}$")
MIN_AGE = 18


def clean_national_id(value: str) -> str:
    """An 18-character resident ID (GB 11643-1999): valid check character, birth date and region."""
    number = (value or "").strip().upper()
    if len(number) != 18 or not number[:17].isdigit():
        raise ValidationError(_("A resident ID number has 18 characters: 17 digits and a check character."))
    if number[-1] != ric.calc_check_digit(number):
        raise ValidationError(_("The check character of this ID number is wrong (GB 11643-1999)."))
    try:
        birth = ric.get_birth_date(number)
    except stdnum_errors.ValidationError as exc:
        raise ValidationError(_("The birth date in this ID number is not a real date.")) from exc
    if birth > datetime.date.today() or birth.year < 1900:
        raise ValidationError(_("The birth date in this ID number is not possible."))
    try:
        ric.get_birth_place(number)
    except stdnum_errors.ValidationError as exc:
        raise ValidationError(_("The region code in this ID number does not exist (GB/T 2260).")) from exc
    return number


def birth_date_of(national_id: str) -> datetime.date:
    return ric.get_birth_date(national_id)


def age_on(birth: datetime.date, day: datetime.date) -> int:
    years = day.year - birth.year
    if (day.month, day.day) < (birth.month, birth.day):
        years -= 1
    return years


def clean_phone(value: str) -> str:
    phone = (value or "").strip()
    if not PHONE_RE.match(phone):
        raise ValidationError(_("A mainland mobile number has 11 digits and starts with 13–19."))
    return phone


def clean_province(value: str) -> str:
    if not is_province(value or ""):
        raise ValidationError(_("“%(code)s” is not a GB/T 2260 province code.") % {"code": value})
    return value


def clean_city(value: str, province: str | None) -> str:
    if not is_city(value or ""):
        raise ValidationError(_("“%(code)s” is not a GB/T 2260 city code.") % {"code": value})
    if province and value[:2] != province[:2]:
        raise ValidationError(_("This city is not in the given province."))
    return value
