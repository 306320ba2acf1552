"""The HTTP API: routes (thin), their dependencies (auth, ownership, sessions), reading
a job submission, the refusal handlers and the OpenAPI document."""

__all__ = ["deps", "errors", "openapi", "routes", "schemas", "submission"]
