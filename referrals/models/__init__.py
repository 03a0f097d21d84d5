"""A referral's whole life. This package grows one module per part of it."""

from referrals.models.applicant import Applicant
from referrals.models.consent import (
    Consent,
    ConsentEvent,
    ConsentRecipient,
    ConsentText,
    LedgerCheckpoint,
)

__all__ = ["Applicant", "Consent", "ConsentEvent", "ConsentRecipient", "ConsentText", "LedgerCheckpoint"]
