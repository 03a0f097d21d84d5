"""GB/T 2260 administrative division codes, from the table python-stdnum ships (with history).

Province codes look like ``310000``; city (prefecture) codes like ``310100``. A code is valid if
it is in the table and still current (entries marked ``[-2010]`` were retired in 2010).
"""

from __future__ import annotations

import re
from functools import lru_cache

from stdnum import numdb

_CODE_RE = re.compile(r"^\d{6}$")
_HISTORY_RE = re.compile(r"^\[(\d*)-(\d*)\](.*)$")


def _current_name(raw: str) -> str | None:
    """The current name of an entry (``None`` if every variant of it has been retired)."""
    for variant in raw.split(","):
        match = _HISTORY_RE.match(variant)
        if not match:
            return variant
        _start, end, name = match.groups()
        if not end:
            return name
    return None


@lru_cache(maxsize=4096)
def region_name(code: str) -> str | None:
    """``上海市`` for ``310000``, ``上海市 市辖区`` for ``310100``; ``None`` if unknown or retired."""
    if not _CODE_RE.match(code or ""):
        return None
    parts = numdb.get("cn/loc").info(code)
    props = {key: value for _part, found in parts for key, value in found.items()}
    province = props.get("province")
    county = props.get("county")
    if not province or not county:
        return None
    county_name = _current_name(county)
    if county_name is None:
        return None
    return province if code.endswith("0000") else f"{province} {county_name}"


def is_province(code: str) -> bool:
    return bool(code) and code.endswith("0000") and region_name(code) is not None


def is_city(code: str) -> bool:
    """A prefecture-level code (``xxyy00``) or a province-level code used as its own city."""
    return bool(code) and code.endswith("00") and region_name(code) is not None


def province_of(code: str) -> str:
    return code[:2] + "0000"
