"""What each web process knows live: the change feed and where it hears changes, the
job views and logins it keeps so status reads need no query, and its open event
streams."""

__all__ = ["feed", "kept_views", "login_cache", "sources", "streams"]
