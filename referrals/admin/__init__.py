"""Referrals admin — the compliance screens: registering the modules registers the model admins."""

from referrals.admin import applicant, consent, jobs, ledger, operations, outbox, reclaims

__all__ = ["applicant", "consent", "jobs", "ledger", "operations", "outbox", "reclaims"]
