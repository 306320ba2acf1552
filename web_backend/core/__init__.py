"""What every part of the web side stands on: settings, the database and its tables,
refusals, tokens and links, rate limits, metrics, migrations, leases (work one process
does at a time), the hooks that announce a commit's changes, and the runner of background workers.

Nothing here knows about routes, jobs' rules or the feed.
"""

__all__ = ["background", "changes", "db", "errors", "leases", "metrics", "migrate", "models",
           "ratelimit", "schemas", "security", "settings"]
