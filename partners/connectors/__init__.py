"""Connectors speak to partners. A partner row names its connector; a partner whose API differs
from protocol v1 gets a subclass registered here, not an ``if`` in the dispatch code."""

from __future__ import annotations

from partners.connectors.base import (
    ApplicationAnswer,
    Connector,
    NoticeAnswer,
    PermanentError,
    ProbeAnswer,
    TransientError,
)
from partners.connectors.protocol_v1 import ProtocolV1Connector

REGISTRY: dict[str, type[Connector]] = {
    "protocol_v1": ProtocolV1Connector,
}


def connector_for(partner) -> Connector:
    """The connector instance that speaks ``partner``'s API."""
    try:
        cls = REGISTRY[partner.connector]
    except KeyError as exc:
        raise PermanentError(f"no connector named {partner.connector!r}", reason="unknown_connector") from exc
    return cls(partner)


__all__ = [
    "REGISTRY",
    "ApplicationAnswer",
    "Connector",
    "NoticeAnswer",
    "PermanentError",
    "ProbeAnswer",
    "ProtocolV1Connector",
    "TransientError",
    "connector_for",
]
