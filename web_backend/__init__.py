"""The web side: accounts, limits, the job queue and its dispatcher, the REST API.

Packages, top to bottom (``lint-imports`` keeps each from importing one above it;
docs/architecture.md has the map):

* :mod:`~web_backend.app` (``create_app``) and :mod:`~web_backend.services` (the
  container of what requests need): the top, built once per app.
* :mod:`~web_backend.api`: routes, their dependencies, the OpenAPI document.
  :mod:`~web_backend.asgi`: what wraps every request (body limits, admission,
  security headers, request ids).
* :mod:`~web_backend.live`: the change feed, kept views and logins, event streams;
  :mod:`~web_backend.samples`: instant characters on this CPU.
* :mod:`~web_backend.jobs`: submission, the queue, its views, the dispatcher and the
  ML client.
* :mod:`~web_backend.webhooks` (outbox, targets, sender) and
  :mod:`~web_backend.accounts` (users, logins, limits).
* :mod:`~web_backend.core`: settings, database, tables, refusals, tokens, storage,
  rate limits, metrics, migrations, commit hooks, background workers.

It reaches the ML side only through :mod:`ml_backend.protocol` and never imports
torch (``lint-imports`` checks both), so it runs on a small CPU machine.
"""

__all__ = ["accounts", "api", "app", "asgi", "core", "jobs", "live", "samples", "services",
           "webhooks"]
