"""Jobs: whether a submission is allowed, every status transition (the queue), how a
job looks to its owner, how fast the queue moves, running jobs on the ML side
(the dispatcher and its client), and deleting them (by their owner, or when they
expire: the retention sweeper)."""

__all__ = ["dispatcher", "eta", "ml_client", "queue", "removal", "retention", "schemas",
           "submit", "views"]
