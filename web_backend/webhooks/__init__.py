"""Webhooks: the outbox written with a job's end, which URLs may be called, and the
sender that signs and delivers them."""

__all__ = ["outbox", "schemas", "sender", "targets"]
