"""Jobs: whether a submission is allowed, every status transition (the queue), how a
job looks to its owner, how fast the queue moves, and running jobs on the ML side
(the dispatcher and its client)."""

__all__ = ["dispatcher", "eta", "ml_client", "queue", "schemas", "submit", "views"]
