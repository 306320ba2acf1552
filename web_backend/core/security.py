"""Passwords, access tokens, refresh tokens and signed links.

* Passwords: Argon2 through pwdlib. Hashing is slow on purpose, so callers run it in a
  worker thread (sync routes do), never on the event loop.
* Access tokens: short-lived JWTs, algorithm pinned to HS256 on decode (no "none", no
  algorithm confusion), ``exp``/``iat``/``sub`` and our ``typ`` all required.
* Refresh tokens: opaque random strings; only their SHA-256 is stored.
* Image links: HMAC-SHA256 over (job, kind, expiry) with a key derived from the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from jose import JWTError, jwt
from pwdlib import PasswordHash

__all__ = [
    "AccessClaims", "TokenError", "VerifiedTokens", "create_access_token",
    "decode_access_token", "hash_password", "hash_refresh_token", "new_refresh_token",
    "sign_link", "verify_link", "verify_password",
]

ALGORITHM = "HS256"
ACCESS_TYPE = "access"
_password_hash = PasswordHash.recommended()  # argon2id; stateless, safe to share
_DUMMY_HASH = _password_hash.hash("timing-equaliser-not-a-password")


class TokenError(Exception):
    """Any reason an access token is not acceptable (the caller answers 401)."""


def hash_password(password: str) -> str:
    return _password_hash.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant work whether or not the user exists (no username probing by timing)."""
    if password_hash is None:
        _password_hash.verify(password, _DUMMY_HASH)
        return False
    return _password_hash.verify(password, password_hash)


@dataclass(frozen=True)
class AccessClaims:
    """Who a bearer credential acts for. An access token's login is its session; an API
    key's is ``key:<id>``, and it acts only within its ``scopes`` (None: a login, which
    may do everything its account may)."""

    user_id: int
    session_id: str
    expires_at: int = 0  # unix time
    scopes: frozenset[str] | None = None
    per_minute: int | None = None  # an API key's own submissions per minute, if it has one

    @property
    def key_id(self) -> str | None:
        """The API key's id when the credential is one."""
        return self.session_id[4:] if self.session_id.startswith("key:") else None


def create_access_token(key: bytes, *, user_id: int, session_id: str, ttl_s: int) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(user_id), "sid": session_id, "typ": ACCESS_TYPE,
                              "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, key.decode(), algorithm=ALGORITHM)


def decode_access_token(key: bytes, token: str) -> AccessClaims:
    try:
        claims = jwt.decode(token, key.decode(), algorithms=[ALGORITHM],
                            options={"require_exp": True, "require_iat": True,
                                     "require_sub": True})
    except JWTError as exc:
        raise TokenError(str(exc)) from None
    if claims.get("typ") != ACCESS_TYPE or not isinstance(claims.get("sid"), str):
        raise TokenError("not an access token")
    try:
        return AccessClaims(user_id=int(claims["sub"]), session_id=claims["sid"],
                            expires_at=int(claims["exp"]))
    except (TypeError, ValueError):
        raise TokenError("malformed subject") from None


class VerifiedTokens:
    """Access tokens whose signature this process already checked, and their claims.

    Checking an HS256 signature costs more than the rest of a status read served from
    memory; a page polling its job presents the same token every time. A hit is the
    exact string checked before under the same key, so it proves what the check did;
    expiry is still checked on every use (as the decoder would). Only valid tokens get
    in (sign-ins are rate limited), and the oldest leave first.
    """

    def __init__(self, key: bytes, *, max_entries: int = 10_000) -> None:
        self.key = key
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._claims: dict[str, AccessClaims] = {}

    def decode(self, token: str) -> AccessClaims:
        """As :func:`decode_access_token` (raises :class:`TokenError`)."""
        with self._lock:
            claims = self._claims.get(token)
        if claims is not None:
            if int(time.time()) <= claims.expires_at:
                return claims
            with self._lock:
                self._claims.pop(token, None)
        claims = decode_access_token(self.key, token)  # an expired one raises here
        with self._lock:
            self._claims[token] = claims
            while len(self._claims) > self.max_entries:
                del self._claims[next(iter(self._claims))]
        return claims


def new_refresh_token() -> tuple[str, str]:
    """(token for the client, hash for the database)."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _link_key(key: bytes) -> bytes:
    return hmac.new(key, b"clipgan image links v1", hashlib.sha256).digest()


def sign_link(key: bytes, job_id: str, kind: str, expires: int) -> str:
    message = f"{job_id}:{kind}:{expires}".encode()
    return hmac.new(_link_key(key), message, hashlib.sha256).hexdigest()


def verify_link(key: bytes, job_id: str, kind: str, expires: int, signature: str) -> bool:
    if expires < time.time():
        return False
    return hmac.compare_digest(sign_link(key, job_id, kind, expires), signature)
