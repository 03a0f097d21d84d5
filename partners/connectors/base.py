"""What every connector offers the dispatch code, and how failures are classified.

``TransientError`` — worth retrying later (connection refused, timeout, 429, 5xx, garbled answer).
``PermanentError`` — retrying cannot help (other 4xx, a partner answer that breaks the protocol).
Neither carries personal data: messages name the call, the status and the partner, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DispatchError(Exception):
    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or message


class TransientError(DispatchError):
    """Retry with backoff; count towards the partner's circuit breaker."""


class PermanentError(DispatchError):
    """Stop: the referral fails with this reason and shows in the operations queue."""


@dataclass(frozen=True)
class ProbeAnswer:
    decision: str  # "accept" | "decline"
    reason: str = ""
    status: int = 200


@dataclass(frozen=True)
class ApplicationAnswer:
    decision: str  # "accepted" | "rejected" | "pending"
    application_id: str = ""
    reason: str = ""
    status: int = 200


@dataclass(frozen=True)
class NoticeAnswer:
    acknowledged: bool
    status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)


class Connector:
    """Base class. Subclasses implement the four calls for one partner API."""

    def __init__(self, partner) -> None:
        self.partner = partner

    def probe(self, payload: dict[str, Any]) -> ProbeAnswer:
        raise NotImplementedError

    def submit_application(self, payload: dict[str, Any], *, idempotency_key: str) -> ApplicationAnswer:
        raise NotImplementedError

    def notify_withdrawal(self, payload: dict[str, Any], *, idempotency_key: str) -> NoticeAnswer:
        raise NotImplementedError

    def notify_reclaim(self, payload: dict[str, Any], *, idempotency_key: str) -> NoticeAnswer:
        raise NotImplementedError
