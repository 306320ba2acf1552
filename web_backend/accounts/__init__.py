"""Accounts: users, their logins and tokens, their limits, and the bodies of the
account routes."""

__all__ = ["schemas", "service"]
