"""Partners admin: registering the modules registers the model admins."""

from partners.admin import contract, partner

__all__ = ["contract", "partner"]
