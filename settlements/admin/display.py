"""How the settlement screens name statuses (the model's labels, in the "statement status" context:
a statement is 已批准 when signed off, not 已授信 like a loan)."""

from __future__ import annotations

from settlements.models import Statement


def statement_status_labels() -> dict[str, str]:
    return {value: str(label) for value, label in Statement.Status.choices}


def statement_status(value: str) -> str:
    return statement_status_labels().get(value, value)
