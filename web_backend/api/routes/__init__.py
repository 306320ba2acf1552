"""HTTP routes, one module per resource. Each route parses, calls one domain
function (accounts, jobs, queue) and returns; its one-line docstring is its OpenAPI
summary. Nothing but :mod:`web_backend.app` imports these modules."""

__all__ = ["admin", "auth", "jobs", "keys", "openai_compat", "samples", "system", "users"]
