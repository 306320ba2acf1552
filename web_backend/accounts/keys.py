"""API keys: a long-lived, revocable credential for programs (bots, scripts, other apps).

A key looks like ``cgk_0a1B2c3D4e5F_<32 characters><6 characters>``:

* ``cgk_`` names it, so secret scanners (and people) recognise a leaked one;
* twelve base62 characters are its **id**: public, shown in listings, how the server
  finds its row (one primary-key lookup);
* thirty-two base62 characters are the **secret** (190 random bits);
* six base62 characters are a **CRC32 checksum** of all that comes before, so a mistyped
  or truncated key is refused without a database read, and a scanner can tell a real
  key from look-alike text without asking us.

Only the SHA-256 of the whole key is stored (the secret has 190 bits: no salt or slow
hash is needed to stop guessing), compared in constant time. A key acts for its
account with the **scopes** it was given (never account or admin changes), until it
is revoked, expires, or its account is disabled or deleted; those take effect at once
on every web process through the same announcement as a logout
(:func:`~web_backend.core.changes.logins_changed`). ``last_used_at`` is written at most
once a minute per key and process (:class:`KeyUsage`), never once per request.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import hmac
import logging
import secrets
import string
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from web_backend.core.changes import logins_changed
from web_backend.core.errors import Conflict, NotFound, Unauthorized
from web_backend.core.models import ApiKey, User, utcnow
from web_backend.core.security import AccessClaims

__all__ = ["KEY_PREFIX", "MAX_KEYS_PER_ACCOUNT", "SCOPES", "KeyUsage", "Scope", "VerifiedKeys",
           "create_key", "key_counts", "list_keys", "looks_like_key", "new_key", "parse_key",
           "revoke_key", "verify_key"]

KEY_PREFIX: Final = "cgk_"
_ALPHABET: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase  # base62
_ID_CHARS, _SECRET_CHARS, _CHECK_CHARS = 12, 32, 6
KEY_LENGTH: Final = len(KEY_PREFIX) + _ID_CHARS + 1 + _SECRET_CHARS + _CHECK_CHARS
MAX_KEYS_PER_ACCOUNT: Final = 50

Scope = Literal["jobs:read", "jobs:write"]
SCOPES: Final[tuple[Scope, ...]] = ("jobs:read", "jobs:write")
_NEVER_EXPIRES = 2**62

log = logging.getLogger(__name__)


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(binascii.crc32(body.encode()), _CHECK_CHARS)


def _random(width: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(width))


def new_key() -> tuple[str, str]:
    """(the key, its id)."""
    key_id = _random(_ID_CHARS)
    body = f"{KEY_PREFIX}{key_id}_{_random(_SECRET_CHARS)}"
    return body + _checksum(body), key_id


def looks_like_key(token: str) -> bool:
    """Whether a bearer credential is meant as an API key (not a JWT)."""
    return token.startswith(KEY_PREFIX)


def parse_key(token: str) -> str:
    """The key's id, if ``token`` is well formed and its checksum holds; else 401 (no
    database read: a mistyped key costs nothing)."""
    body, check = token[:-_CHECK_CHARS], token[-_CHECK_CHARS:]
    if (len(token) != KEY_LENGTH or not token.startswith(KEY_PREFIX)
            or body[len(KEY_PREFIX) + _ID_CHARS] != "_"
            or any(c not in _ALPHABET for c in token[len(KEY_PREFIX):].replace("_", ""))
            or not hmac.compare_digest(_checksum(body), check)):
        raise Unauthorized("this API key is malformed (mistyped or cut short?); copy it "
                           "again, or make a new one")
    return body[len(KEY_PREFIX):len(KEY_PREFIX) + _ID_CHARS]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, user: User, name: str, scopes: list[Scope],
               expires_in_days: int | None, rate_per_minute: int | None) -> tuple[ApiKey, str]:
    """A new key (the row, and the key itself: shown once, never stored)."""
    live = session.scalar(select(func.count()).select_from(ApiKey).where(
        ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))) or 0
    if live >= MAX_KEYS_PER_ACCOUNT:
        raise Conflict(f"an account has at most {MAX_KEYS_PER_ACCOUNT} keys; revoke one first")
    key, key_id = new_key()
    now = utcnow()
    row = ApiKey(id=key_id, user_id=user.id, name=name, secret_hash=_hash(key),
                 scopes=sorted(set(scopes)), created_at=now,
                 expires_at=(now + timedelta(days=expires_in_days)
                             if expires_in_days is not None else None),
                 rate_per_minute=rate_per_minute)
    session.add(row)
    session.commit()
    return row, key


def list_keys(session: Session, *, user: User) -> list[ApiKey]:
    """The account's keys that work or did (revoked ones are not listed)."""
    keys = list(session.scalars(select(ApiKey).where(
        ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None)).order_by(ApiKey.created_at)))
    session.commit()
    return keys


def revoke_key(session: Session, *, user: User, key_id: str) -> None:
    """Revoke one of the account's keys: it stops working at once, on every process."""
    done = session.execute(update(ApiKey).where(
        ApiKey.id == key_id, ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow()).returning(ApiKey.id)).first()
    if done is None:
        session.rollback()
        raise NotFound(f"no API key {key_id}")
    logins_changed(session, [user.id])
    session.commit()


def key_counts(session: Session, user_ids: Iterable[int]) -> dict[int, int]:
    """Live keys per account (what an administrator sees), in one query."""
    ids = list(user_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(ApiKey.user_id, func.count()).where(ApiKey.user_id.in_(ids),
                                                   ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.user_id)).all()
    return {user_id: count for user_id, count in rows}


@dataclass(frozen=True)
class _Checked:
    claims: AccessClaims
    rate_per_minute: int | None


def verify_key(session: Session, key: str) -> tuple[AccessClaims, int | None]:
    """The claims of a key checked against its row (hash, revocation, expiry, owner's
    standing): (claims, the key's own submissions per minute)."""
    key_id = parse_key(key)
    row = session.execute(select(ApiKey, User.is_active).join(User, User.id == ApiKey.user_id)
                          .where(ApiKey.id == key_id)).first()
    session.commit()
    if row is None or not hmac.compare_digest(row[0].secret_hash, _hash(key)):
        raise Unauthorized("unknown API key; make a new one")
    api_key, active = row
    if api_key.revoked_at is not None:
        raise Unauthorized("this API key was revoked")
    expires = api_key.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=utcnow().tzinfo)
    if expires is not None and expires <= utcnow():
        raise Unauthorized("this API key has expired; make a new one")
    if not active:
        raise Unauthorized("this account is disabled")
    claims = AccessClaims(user_id=api_key.user_id, session_id=f"key:{api_key.id}",
                          expires_at=int(expires.timestamp()) if expires else _NEVER_EXPIRES,
                          scopes=frozenset(api_key.scopes or ()))
    return claims, api_key.rate_per_minute


class VerifiedKeys:
    """Keys whose hash this process already checked, and their claims (like
    :class:`~web_backend.core.security.VerifiedTokens`): a hit is the exact string checked
    before, so it proves what the hash check did. Whether the key still works (revoked,
    owner disabled) is the login cache's to say; expiry is checked on every use."""

    def __init__(self, *, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._checked: dict[str, _Checked] = {}

    def get(self, key: str) -> tuple[AccessClaims, int | None] | None:
        with self._lock:
            checked = self._checked.get(key)
        if checked is None or int(time.time()) >= checked.claims.expires_at:
            return None
        return checked.claims, checked.rate_per_minute

    def put(self, key: str, claims: AccessClaims, rate_per_minute: int | None) -> None:
        with self._lock:
            self._checked[key] = _Checked(claims, rate_per_minute)
            while len(self._checked) > self.max_entries:
                del self._checked[next(iter(self._checked))]


class KeyUsage:
    """When keys were last used, written at most once a minute (a background worker):
    a key used 600 times a minute costs one UPDATE a minute, not 600."""

    def __init__(self, sessions: sessionmaker[Session], *, every_s: float = 60.0) -> None:
        self.sessions = sessions
        self.every_s = every_s
        self._used: set[str] = set()
        self._lock = threading.Lock()
        self._stop = asyncio.Event()

    def touch(self, key_id: str) -> None:
        with self._lock:
            self._used.add(key_id)

    def flush(self) -> int:
        """Write what was used since the last flush; returns how many keys."""
        with self._lock:
            used, self._used = self._used, set()
        if used:
            try:
                with self.sessions() as session:
                    session.execute(update(ApiKey).where(ApiKey.id.in_(sorted(used)))
                                    .values(last_used_at=utcnow()))
                    session.commit()
            except Exception:
                with self._lock:  # the next flush writes them
                    self._used |= used
                raise
        return len(used)

    async def run(self) -> None:
        """Until :meth:`stop`, and once more then (what the last minute used)."""
        self._stop = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)
            try:
                await asyncio.to_thread(self.flush)
            except Exception as exc:  # the database is away: the next minute writes them
                log.warning("could not record API keys' last use (%s: %s); retrying",
                            type(exc).__name__, exc)
            if self._stop.is_set():
                return

    def stop(self) -> None:
        self._stop.set()
