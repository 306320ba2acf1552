"""What every part of the web side stands on: settings, the database and its tables,
refusals, tokens and links, blob storage, rate limits, metrics, migrations, the hooks
that announce a commit's changes, and the runner of background workers.

Nothing here knows about routes, jobs' rules or the feed.
"""

__all__ = ["background", "changes", "db", "errors", "metrics", "migrate", "models",
           "ratelimit", "schemas", "security", "settings", "storage"]
