"""The webhook sender: delivers the outbox's due rows, signed, to checked addresses.

One runs beside each web process's API (or none: ``CLIPGAN_WEBHOOKS_ENABLED=false``).
Each delivery is:

1. claimed for one attempt (:func:`outbox.claim_due`; senders in several
   processes never send the same attempt twice, and a sender that dies leaves it due);
2. built from the job as it is now (by the view function it is handed: the job's
   ``JobOut``, links signed afresh) as the Standard Webhooks payload
   ``{"type": "job.completed", "timestamp": ..., "data": job}``;
3. signed with the owner's webhook secret (``webhook-id``, ``webhook-timestamp``,
   ``webhook-signature``), so a receiver knows it came from us, unchanged, recently;
4. sent to the URL's host **re-checked now** and connected to by the checked address
   (TLS still verified against the host name), no redirects, no proxies from the
   environment, no connection reuse between hosts;
5. settled, whatever happened: any 2xx is delivered; anything else (an answer, an
   error, a URL the HTTP client refuses) is retried after ``CLIPGAN_WEBHOOK_BACKOFF_S``,
   then marked failed, visible in the job.

One attempt has one deadline, ``CLIPGAN_WEBHOOK_TIMEOUT_S``, for all of it: looking up
the name, connecting, and the whole answer (a per-read timeout would let a receiver
that trickles a byte at a time hold a slot for as long as it likes). And one account
has at most a few deliveries in flight per process, so its receivers, however slow,
cannot hold every slot while other accounts' webhooks wait. A disabled or deleted
account's webhooks are not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from web_backend.core.models import Job, User
from web_backend.core.settings import WebhookSettings
from web_backend.webhooks import outbox
from web_backend.webhooks.outbox import Due
from web_backend.webhooks.targets import (
    Resolver,
    ResolverBusy,
    Target,
    WebhookTargetRefused,
    resolve_target,
)

__all__ = ["WebhookSender"]

log = logging.getLogger(__name__)

_BATCH = 32           # deliveries claimed per look
_IN_FLIGHT = 16       # sent at once per process
_PER_OWNER = 4        # of those, at most this many for one account
_USER_AGENT = "clipgan-webhooks/1"


@dataclass(frozen=True)
class _Message:
    """What one attempt sends, where, and the secret that signs it."""

    url: str
    body: str
    secret: str


JobPayload = Callable[[Session, Job], dict[str, Any]]


class WebhookSender:
    """Delivers due webhooks until :meth:`stop`."""

    def __init__(self, *,
                 sessions:       sessionmaker[Session],  # reads (the job, its owner)
                 write_sessions: sessionmaker[Session],  # claims and settles
                 settings:       WebhookSettings,        # timeouts, retries, allowed networks
                 allow_http:     bool,                   # dev: http:// receivers too
                 payload:        JobPayload,             # the job as it is now, as JSON data
                 resolver:       Resolver,               # bounded name lookups
                 transport:      httpx.AsyncBaseTransport | None = None,  # tests
                 per_owner:      int = _PER_OWNER,       # one account's attempts in flight
                 ) -> None:
        self.sessions = sessions
        self.write_sessions = write_sessions
        self.settings = settings
        self.allow_http = allow_http
        self.payload = payload
        self.resolver = resolver
        self.per_owner = per_owner
        self._by_owner: Counter[int] = Counter()
        # a new connection per delivery: a pooled one, opened for another host name on the
        # same address, would skip that name's TLS check
        self.http = httpx.AsyncClient(
            transport=transport, follow_redirects=False, trust_env=False,
            timeout=self.settings.timeout_s,
            limits=httpx.Limits(max_keepalive_connections=0))
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        # every attempt ends within timeout_s (its deadline); the hold has room for the
        # two database writes around it, so no attempt outlives its claim
        hold_s = self.settings.timeout_s * 2 + 30
        try:
            while not self._stop.is_set():
                try:
                    due = await asyncio.to_thread(self._claim, hold_s, dict(self._by_owner))
                except Exception as exc:  # the database may be restarting
                    log.warning("webhook outbox read failed (%s: %s); retrying",
                                type(exc).__name__, exc)
                    due = []
                for delivery in due:
                    await self._slots.acquire()
                    self._by_owner[delivery.owner_id] += 1
                    task = asyncio.create_task(self._deliver(delivery), name=delivery.id)
                    self._tasks.add(task)
                    task.add_done_callback(functools.partial(self._done, due=delivery))
                if len(due) < _BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.settings.poll_s)
        finally:
            # attempts cut short stay claimed until their hold ends, then are sent again
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.http.aclose()

    def _done(self, task: asyncio.Task[None], *, due: Due) -> None:
        self._tasks.discard(task)
        self._slots.release()
        self._by_owner[due.owner_id] -= 1
        if self._by_owner[due.owner_id] <= 0:
            del self._by_owner[due.owner_id]

    def _claim(self, hold_s: float, in_flight: dict[int, int]) -> list[Due]:
        with self.write_sessions() as session:
            return outbox.claim_due(session, hold_s=hold_s, limit=_BATCH,
                                    max_attempts=self.settings.max_attempts,
                                    per_owner=self.per_owner, in_flight=in_flight)

    def _message(self, due: Due) -> _Message | None:
        """The job as it is now, as the payload; None when the job has no webhook left
        or its owner's account is disabled or gone."""
        with self.sessions() as session:
            job = session.get(Job, due.job_id)
            owner = session.get(User, job.user_id) if job is not None else None
            if job is None or owner is None or job.webhook_url is None or \
                    not owner.webhook_secret or not owner.is_active:
                return None
            data = self.payload(session, job)
            body = json.dumps({"type": f"job.{due.event}",
                               "timestamp": datetime.now(UTC).isoformat(), "data": data},
                              separators=(",", ":"))
            return _Message(job.webhook_url, body, owner.webhook_secret)

    def _settle(self, due: Due, error: str | None, *, final: bool = False) -> None:
        """``final``: no retry, whatever attempts are left."""
        retry = None
        if error is not None and not final and due.attempt < self.settings.max_attempts:
            retry = self.settings.backoff_s[min(due.attempt, len(self.settings.backoff_s)) - 1]
        with self.write_sessions() as session:
            outbox.settle(session, due, error=error, retry_in_s=retry)
        if error is not None:
            log.warning("webhook %s for job %s, attempt %d: %s%s", due.id, due.job_id,
                        due.attempt, error, "" if retry is None else f"; retrying in {retry} s")

    async def _deliver(self, due: Due) -> None:
        try:
            message = await asyncio.to_thread(self._message, due)
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup: the claim's hold ends and it is sent again
            log.exception("webhook %s for job %s could not be read", due.id, due.job_id)
            return
        if message is None:
            error: str | None = ("not sent: the job or its webhook is gone, or its owner's "
                                 "account is disabled, deleted or has no webhook secret")
            final = True
        else:
            error, final = await self._attempt(due, message), False
        try:
            await asyncio.to_thread(self._settle, due, error, final=final)
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup: the claim's hold ends and it is sent again
            log.exception("webhook %s for job %s could not be settled", due.id, due.job_id)

    async def _attempt(self, due: Due, message: _Message) -> str | None:
        """One attempt within its deadline; None when the receiver took it, else why not
        (never raises but for cancellation: every attempt is settled)."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await self._send(due, message)
        except TimeoutError:
            return f"no whole answer within {self.settings.timeout_s:g} s"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a URL the HTTP client refuses, a TLS error...
            log.warning("webhook %s: %s", due.id, type(exc).__name__, exc_info=exc)
            return f"could not be sent: {type(exc).__name__}"

    async def _send(self, due: Due, message: _Message) -> str | None:
        """Send one attempt; None when the receiver took it, else why not."""
        try:
            target = await resolve_target(
                message.url, allow_http=self.allow_http,
                allow_networks=self.settings.allow_networks, resolver=self.resolver,
                owner=due.owner_id)
        except WebhookTargetRefused as exc:
            return f"refused: {exc}"
        except ResolverBusy as exc:
            return f"not sent: {exc}"
        timestamp = datetime.now(UTC)
        headers = {
            "webhook-id": due.id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": Webhook(message.secret).sign(due.id, timestamp, message.body),
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
        }
        try:
            response = await self._post(target, headers, message.body)
        except httpx.HTTPError as exc:
            return f"could not reach the receiver: {type(exc).__name__}: {exc}"[:300]
        if 200 <= response.status_code < 300:
            return None
        return f"the receiver answered {response.status_code}"

    async def _post(self, target: Target, headers: dict[str, str], body: str,
                    ) -> httpx.Response:
        """POST to the checked address, with the URL's host as Host and TLS name."""
        url = httpx.URL(target.url)
        host = f"[{target.host}]" if ":" in target.host else target.host  # an IPv6 literal
        host_header = host if url.port is None else f"{host}:{url.port}"
        request = self.http.build_request(
            "POST", url.copy_with(host=target.address), content=body.encode(),
            headers={**headers, "host": host_header},
            extensions={"sni_hostname": target.host})
        response = await self.http.send(request, stream=True)
        await response.aclose()  # the answer's body is not ours to read
        return response
