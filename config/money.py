"""Money is CNY as ``Decimal`` with two places, rounded half up, never ``float``."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
RATE_PLACES = Decimal("0.0001")


def round_money(value: Decimal | int | str) -> Decimal:
    """Round to 0.01 CNY, half up (0.005 → 0.01)."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
