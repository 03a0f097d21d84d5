"""A referral's whole life. This package grows one module per part of it."""

from referrals.models.applicant import Applicant
from referrals.models.consent import (
    Consent,
    ConsentEvent,
    ConsentRecipient,
    ConsentText,
    LedgerCheckpoint,
)
from referrals.models.dispatch import Dispatch, DispatchAttempt
from referrals.models.job import Job
from referrals.models.loan import CallbackEvent, Loan, LoanOverdue, Repayment
from referrals.models.reclaim import Reclaim, ReclaimNearMiss, ReclaimTransition
from referrals.models.referral import CapCounter, Referral, RoutingDecision

__all__ = [
    "Applicant",
    "CallbackEvent",
    "CapCounter",
    "Consent",
    "ConsentEvent",
    "ConsentRecipient",
    "ConsentText",
    "Dispatch",
    "DispatchAttempt",
    "Job",
    "LedgerCheckpoint",
    "Loan",
    "LoanOverdue",
    "Reclaim",
    "ReclaimNearMiss",
    "ReclaimTransition",
    "Referral",
    "Repayment",
    "RoutingDecision",
]
