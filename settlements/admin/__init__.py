"""Settlements admin — runs, statements and the revenue chart: registering the modules registers
the model admins."""

from settlements.admin import runs, statements

__all__ = ["runs", "statements"]
