"""Open event streams: how many, whose, and when they must end.

``/events`` is exempt from admission control (a stream lasts as long as its job), so
it needs its own bounds: streams per account (counted against the job's owner, however
the stream was opened, so a shared link cannot be used to open thousands) and per
process. And a stream must end on its own: when the credential that opened it
expires, and when the server is asked to stop, since uvicorn waits for open
responses before it exits.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from web_backend.core.errors import TooManyRequests

__all__ = ["StreamGate"]


class StreamGate:
    """Per-process stream counts and the 'server is stopping' flag streams watch."""

    def __init__(self, *, per_user: int, total: int) -> None:
        self.per_user = per_user
        self.total = total
        self.closing = False
        self._open: Counter[int] = Counter()
        self._lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        return sum(self._open.values())

    def admit(self, owner_id: int) -> Callable[[], None]:
        """Hold a place for one stream of ``owner_id``'s job, or refuse with 429.

        Returns the function that gives the place back (calling it twice is harmless).
        """
        with self._lock:
            if self._open[owner_id] >= self.per_user:
                raise TooManyRequests(
                    f"at most {self.per_user} event streams per account are open at once; "
                    "close one (or poll GET /v1/jobs/{id})", retry_after_s=5)
            if sum(self._open.values()) >= self.total:
                raise TooManyRequests("this server has as many event streams open as it "
                                      "allows; poll GET /v1/jobs/{id} or retry", retry_after_s=5)
            self._open[owner_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._open[owner_id] -= 1
                if not self._open[owner_id]:
                    del self._open[owner_id]

        return release

    @contextmanager
    def closing_on_signals(self, on_close: Callable[[], None] | None = None) -> Iterator[None]:
        """While serving, SIGINT/SIGTERM also tell streams to end, then do what they did.

        ``on_close`` runs in the signal handler (so it must only schedule work: waiting
        streams are woken through it).

        Installed at app start-up, so what it chains to is the server's own handler
        (uvicorn's graceful shutdown). Outside the main thread (tests) there is
        nothing to chain.
        """
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            self.closing = True
            if on_close is not None:
                on_close()
            chained = previous.get(signum)
            if callable(chained):
                chained(signum, frame)
            elif chained == signal.SIG_DFL:  # what the signal did before: end the process
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, handler)
        try:
            yield
        finally:
            for number, old in previous.items():
                if signal.getsignal(number) is handler:
                    signal.signal(number, old if old is not None else signal.SIG_DFL)
