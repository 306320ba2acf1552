"""Logins this process has checked, kept only while it hears every change to them.

A status read is the most frequent request, and checking its login costs a query.
This cache lets a read skip that query without weakening the promise that logout,
a password change or an administrator's disable acts at once on every worker:

* Every change to a login or an account's standing is announced
  (:func:`web_backend.core.changes.logins_changed` in the writing transaction): this
  process forgets that user's logins right after the commit, and the others hear it
  through the change feed (PostgreSQL trigger, Redis publish, or the SQLite poller
  reading ``users.logins_changed_at``).
* The cache is used only while the feed is connected. When its source is lost the
  cache is emptied and off, and it comes back only when the source has reconnected
  (the feed's RESYNC): nothing remembered across a gap in which changes went unheard.
* A fill races invalidations safely: it is taken under a generation number read
  before the query, and dropped if any invalidation happened since.
* An entry lives at most ``max_age_s`` anyway: the bound on a failure nobody saw (a
  half-open connection before its keepalive gives up).

Only live logins are kept (a refusal is always read again, and costs its query).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["LoginCache"]


class LoginCache:
    """Session id -> user id of logins read live within ``max_age_s``, bounded in size.

    Thread-safe: filled from request threads, invalidated from commit hooks and the
    feed's task.
    """

    def __init__(self, *, max_age_s: float, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()  # oldest first
        self._by_user: dict[int, set[str]] = {}
        self._generation = 0
        self._listening = False
        self.hits = self.fills = 0                 # for tests and the bench

    @property
    def enabled(self) -> bool:
        return self.max_age_s > 0 and self._listening

    def __len__(self) -> int:
        return len(self._entries)

    def generation(self) -> int:
        """Read before the query whose result may be :meth:`remember`-ed."""
        return self._generation

    def live(self, session_id: str, user_id: int) -> bool:
        """True when this login was read live recently and nothing changed it since."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None or entry[0] != user_id:
                return False
            if self._clock() - entry[1] > self.max_age_s:
                self._drop(session_id)
                return False
            self.hits += 1
            return True

    def remember(self, session_id: str, user_id: int, generation: int) -> None:
        """A login read live by a query begun at ``generation``."""
        with self._lock:
            if not self.enabled or generation != self._generation:
                return  # something changed (or the feed was lost) during that query
            self._drop(session_id)
            self._entries[session_id] = (user_id, self._clock())
            self._by_user.setdefault(user_id, set()).add(session_id)
            self.fills += 1
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    def forget_users(self, user_ids: Iterable[int]) -> None:
        """These users' logins (or standing) changed."""
        with self._lock:
            self._generation += 1
            for user_id in user_ids:
                for session_id in self._by_user.pop(user_id, ()):
                    self._entries.pop(session_id, None)

    def feed_connected(self) -> None:
        """The feed (re)connected: what it may have missed is forgotten; trust it again."""
        with self._lock:
            self._clear()
            self._listening = True

    def feed_lost(self) -> None:
        """The feed cannot hear changes: forget everything and stop caching."""
        with self._lock:
            self._clear()
            self._listening = False

    def expire(self) -> None:
        """Drop entries past their age (the SQLite poller runs while any are kept)."""
        with self._lock:
            now = self._clock()
            while self._entries:
                session_id, (_, checked) = next(iter(self._entries.items()))
                if now - checked <= self.max_age_s:
                    break
                self._drop(session_id)

    def _clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._by_user.clear()

    def _drop(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            sessions = self._by_user.get(entry[0])
            if sessions is not None:
                sessions.discard(session_id)
                if not sessions:
                    del self._by_user[entry[0]]
