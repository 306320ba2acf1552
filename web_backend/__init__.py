"""The web side: accounts, limits, the job queue and its dispatcher, the REST API.

Public modules (see docs/architecture.md): :mod:`~web_backend.app` (``create_app``),
:mod:`~web_backend.settings`, :mod:`~web_backend.accounts`, :mod:`~web_backend.jobs`,
:mod:`~web_backend.queue`, :mod:`~web_backend.dispatcher`, :mod:`~web_backend.migrate`.

It reaches the ML side only through :mod:`ml_backend.protocol` and never imports
torch (``lint-imports`` checks both), so it runs on a small CPU machine.
"""

__all__ = ["accounts", "app", "dispatcher", "jobs", "migrate", "queue", "settings"]
