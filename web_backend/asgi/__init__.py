"""ASGI layers around every request, independent of what the request does: bodies read
whole within a size and time limit, admission control, security headers, request ids
and the access log."""

__all__ = ["admission", "bodies", "logs", "security_headers"]
