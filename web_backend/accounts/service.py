"""Accounts: users, their logins (sessions and tokens) and their limits.

The routes and ``clipgan users create`` both come here, so there is one definition
of what registering, signing in or disabling an account does. Functions raise
:mod:`web_backend.core.errors` refusals and commit their own changes.

A login is an :class:`~web_backend.core.models.AuthSession`; every access token names
its session and the session is checked on every request, so revoking it (logout,
password change, an administrator's disable, a replayed refresh token) acts at
once on every worker. Each of those changes is announced (``logins_changed``) in its
transaction, so the workers' login caches forget it at once too; so is deleting an
account (``mark_deleted``), which takes everything of theirs with it.
"""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta
from typing import Protocol

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from web_backend.accounts.schemas import (
    Limits,
    LimitsUpdate,
    TokenPair,
    UserCreate,
    UserDetail,
    UserOut,
)
from web_backend.core.changes import logins_changed, mark_deleted
from web_backend.core.errors import Conflict, Forbidden, Unauthorized
from web_backend.core.models import AuthSession, RefreshToken, User, UserUsage, utcnow
from web_backend.core.ratelimit import RateLimiter
from web_backend.core.security import (
    create_access_token,
    hash_password,
    hash_refresh_token,
    new_refresh_token,
    verify_password,
)
from web_backend.core.settings import AuthSettings, LimitSettings
from web_backend.storage import refs

__all__ = ["change_password", "delete_account", "limits_for", "new_webhook_secret", "refresh",
           "register",
           "revoke_sessions", "set_active", "set_limits", "sign_in", "sign_out", "user_detail"]


class LimitOverrides(Protocol):
    """What an account row says of its limits (a ``User``, or a row of those columns)."""

    @property
    def submissions_per_minute(self) -> int | None: ...
    @property
    def max_active_jobs(self) -> int | None: ...
    @property
    def daily_images(self) -> int | None: ...


def limits_for(user: LimitOverrides, defaults: LimitSettings) -> Limits:
    """The user's own limits where an administrator set them, else the service's."""
    return Limits(
        submissions_per_minute=user.submissions_per_minute or defaults.submissions_per_minute,
        max_active_jobs=user.max_active_jobs or defaults.max_active_jobs,
        daily_images=user.daily_images or defaults.daily_images,
    )


def user_detail(user: User, defaults: LimitSettings, *, api_keys: int | None = None,
                storage_bytes: int | None = None) -> UserDetail:
    return UserDetail(**UserOut.model_validate(user).model_dump(),
                      limits=limits_for(user, defaults), api_keys=api_keys,
                      storage_bytes=storage_bytes)


def register(session: Session, body: UserCreate, *, is_admin: bool = False) -> User:
    """A new account; usernames and emails are unique (409 says which one is taken)."""
    email = body.email.lower()
    clash = session.scalar(select(User).where(or_(
        func.lower(User.username) == body.username.lower(), User.email == email)))
    if clash is not None:
        what = "username" if clash.username.lower() == body.username.lower() else "email"
        raise Conflict(f"that {what} is already registered")
    user = User(username=body.username, email=email, is_admin=is_admin,
                password_hash=hash_password(body.password))
    session.add(user)
    session.flush()
    session.add(UserUsage(user_id=user.id, active_jobs=0, day=utcnow().date(), images_today=0))
    session.commit()
    return user


def _issue_tokens(session: Session, user: User, login: AuthSession, *, signing_key: bytes,
                  settings: AuthSettings) -> TokenPair:
    token, token_hash = new_refresh_token()
    session.add(RefreshToken(session_id=login.id, token_hash=token_hash,
                             expires_at=utcnow() + timedelta(seconds=settings.refresh_token_ttl_s)))
    session.commit()
    ttl = settings.access_token_ttl_s
    return TokenPair(access_token=create_access_token(signing_key, user_id=user.id,
                                                      session_id=login.id, ttl_s=ttl),
                     expires_in=ttl, refresh_token=token)


def sign_in(session: Session, *, username: str, password: str, signing_key: bytes,
            settings: AuthSettings, limiter: RateLimiter) -> TokenPair:
    """A new login. Wrong usernames and wrong passwords look alike (and take as long).

    Failed attempts are also counted per account name, whichever address they come
    from: guessing one account's password from many addresses stops there too.
    """
    name = username.lower()[:64]
    failures = limiter.peek("login-failures", name, limit=settings.failed_sign_ins_per_hour,
                            per="hour")
    if not failures.allowed:
        raise failures.refusal(f"too many failed sign-ins for this account; try again in "
                               f"{failures.reset_after_s} s")
    user = session.scalar(select(User).where(func.lower(User.username) == name))
    # a missing user costs the same hash as a real one: no username probing by timing
    if not verify_password(password, user.password_hash if user else None) or user is None:
        limiter.hit("login-failures", name, limit=settings.failed_sign_ins_per_hour, per="hour")
        raise Unauthorized("wrong username or password")
    if not user.is_active:
        raise Forbidden("this account is disabled")
    login = AuthSession(user_id=user.id)
    session.add(login)
    session.flush()
    return _issue_tokens(session, user, login, signing_key=signing_key, settings=settings)


def refresh(session: Session, *, refresh_token: str, signing_key: bytes,
            settings: AuthSettings) -> TokenPair:
    """Trade a refresh token for a new pair. Each works once; presenting a spent one
    means it was stolen or replayed, so the whole login is revoked."""
    row = session.execute(
        select(RefreshToken, AuthSession, User)
        .join(AuthSession, RefreshToken.session_id == AuthSession.id)
        .join(User, AuthSession.user_id == User.id)
        .where(RefreshToken.token_hash == hash_refresh_token(refresh_token))
        .with_for_update(of=RefreshToken)).first()
    if row is None:
        raise Unauthorized("unknown refresh token; sign in again")
    token, login, user = row
    if token.used_at is not None:
        if login.revoked_at is None:
            login.revoked_at = utcnow()
            login.revoked_reason = "refresh token reuse"
            logins_changed(session, [login.user_id])
            session.commit()
        raise Unauthorized("refresh token was already used; for safety this login was signed "
                           "out everywhere, sign in again")
    expires = token.expires_at if token.expires_at.tzinfo else token.expires_at.replace(
        tzinfo=utcnow().tzinfo)
    if login.revoked_at is not None or expires < utcnow() or not user.is_active:
        raise Unauthorized("this login has ended; sign in again")
    token.used_at = utcnow()
    return _issue_tokens(session, user, login, signing_key=signing_key, settings=settings)


def revoke_sessions(session: Session, user_id: int, reason: str, *,
                    except_session: str | None = None) -> None:
    """End every login of a user (but one, when given); does not commit."""
    query = update(AuthSession).where(AuthSession.user_id == user_id,
                                      AuthSession.revoked_at.is_(None))
    if except_session is not None:
        query = query.where(AuthSession.id != except_session)
    session.execute(query.values(revoked_at=utcnow(), revoked_reason=reason))
    logins_changed(session, [user_id])


def sign_out(session: Session, login: AuthSession) -> None:
    login.revoked_at = utcnow()
    login.revoked_reason = "logout"
    logins_changed(session, [login.user_id])
    session.commit()


def change_password(session: Session, *, user: User, login: AuthSession, current: str,
                    new: str, limiter: RateLimiter, attempts_per_hour: int) -> None:
    """Signs out every other login of this account; this one stays signed in.

    Attempts are limited: a stolen access token must not become a way to guess the
    password it cannot see.
    """
    attempt = limiter.hit("password-change", str(user.id), limit=attempts_per_hour, per="hour")
    if not attempt.allowed:
        raise attempt.refusal(f"too many password changes; try again in "
                              f"{attempt.reset_after_s} s")
    if not verify_password(current, user.password_hash):
        raise Forbidden("current_password is wrong")
    user.password_hash = hash_password(new)
    revoke_sessions(session, user.id, "password changed", except_session=login.id)
    session.commit()


def set_active(session: Session, *, user: User, active: bool, by: User) -> User:
    """Disable (tokens stop working on the next request) or enable an account."""
    if not active and user.id == by.id:
        raise Conflict("you cannot disable your own account")
    user.is_active = active
    if not active:
        revoke_sessions(session, user.id, "disabled by an administrator")
    else:
        logins_changed(session, [user.id])
    session.commit()
    return user


def set_limits(session: Session, *, user: User, limits: LimitsUpdate) -> User:
    """Per-user overrides; null resets a limit to the service default."""
    for name, value in limits.model_dump().items():
        setattr(user, name, value)
    session.commit()
    return user


def new_webhook_secret(session: Session, *, user: User) -> str:
    """A fresh secret for the user's webhook signatures, replacing any earlier one.

    Kept as is (the server signs with it, so it cannot be hashed like a password) and
    returned only here: the user copies it into their receiver. Deliveries not yet sent
    are signed with the new one.
    """
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    user.webhook_secret = secret
    session.commit()
    return secret


def delete_account(session: Session, *, user: User, by: User | None = None,
                   password: str | None = None, limiter: RateLimiter | None = None,
                   attempts_per_hour: int = 5) -> list[str]:
    """Delete ``user`` with everything of theirs, and commit: jobs (running ones stop at
    their dispatcher's next write), their webhook deliveries, logins and refresh tokens,
    API keys, the webhook secret, usage counters. Every process stops trusting their
    logins at once (``mark_deleted``). Returns the blob keys their jobs let go of (the
    caller collects them: a picture another account's job shares stays).

    By the user themselves, ``password`` confirms it (attempts limited, like password
    changes); by an administrator ``by``, not for their own account.
    """
    if by is not None and by.id == user.id:
        raise Conflict("delete your own account with DELETE /v1/users/me")
    if by is None:
        if limiter is not None:
            attempt = limiter.hit("account-delete", str(user.id), limit=attempts_per_hour,
                                  per="hour")
            if not attempt.allowed:
                raise attempt.refusal(f"too many attempts; try again in "
                                      f"{attempt.reset_after_s} s")
        if password is None or not verify_password(password, user.password_hash):
            raise Forbidden("password is wrong")
    if user.is_admin and user.is_active:
        admins = session.scalar(select(func.count()).select_from(User).where(
            User.is_admin.is_(True), User.is_active.is_(True))) or 0
        if admins <= 1:
            raise Conflict("this is the only administrator: make another one first")
    released = refs.release_jobs_of(session, user.id)
    mark_deleted(session, users=[user.id])
    # the database cascades (jobs, deliveries, logins, tokens, keys, usage): one statement
    session.execute(delete(User).where(User.id == user.id))
    session.commit()
    return released
