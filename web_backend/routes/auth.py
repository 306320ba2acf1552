"""Registration, sign-in, refresh-token rotation, sign-out."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from web_backend.deps import CurrentLogin, ServicesDep, SessionDep
from web_backend.jobs import too_many
from web_backend.models import AuthSession, RefreshToken, User, utcnow
from web_backend.schemas import RefreshRequest, TokenPair, UserCreate, UserOut
from web_backend.security import (
    create_access_token,
    hash_password,
    hash_refresh_token,
    new_refresh_token,
    verify_password,
)
from web_backend.services import Services

router = APIRouter(tags=["auth"])


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def revoke_sessions(session: Session, user_id: int, reason: str, *,
                    except_session: str | None = None) -> None:
    query = update(AuthSession).where(AuthSession.user_id == user_id,
                                      AuthSession.revoked_at.is_(None))
    if except_session is not None:
        query = query.where(AuthSession.id != except_session)
    session.execute(query.values(revoked_at=utcnow(), revoked_reason=reason))


def issue_tokens(session: Session, services: Services, user: User,
                 auth_session: AuthSession) -> TokenPair:
    token, token_hash = new_refresh_token()
    ttl = services.settings.refresh_token_ttl_s
    session.add(RefreshToken(session_id=auth_session.id, token_hash=token_hash,
                             expires_at=utcnow() + timedelta(seconds=ttl)))
    session.commit()
    access_ttl = services.settings.access_token_ttl_s
    return TokenPair(access_token=create_access_token(services.signing_key, user_id=user.id,
                                                      session_id=auth_session.id,
                                                      ttl_s=access_ttl),
                     expires_in=access_ttl, refresh_token=token)


@router.post("/v1/users", status_code=201, response_model=UserOut,
             responses={409: {"description": "username or email taken"}})
def register(body: UserCreate, request: Request, services: ServicesDep,
             session: SessionDep) -> User:
    rate = services.limiter.hit("register", client_ip(request),
                                limit=services.settings.registrations_per_hour, per="hour")
    if not rate.allowed:
        raise too_many("too many registrations from this address; try again later", rate)
    clash = session.scalar(select(User).where(or_(User.username == body.username,
                                                  User.email == body.email.lower())))
    if clash is not None:
        what = "username" if clash.username == body.username else "email"
        raise HTTPException(409, f"that {what} is already registered")
    user = User(username=body.username, email=body.email.lower(),
                password_hash=hash_password(body.password))
    session.add(user)
    session.commit()
    return user


@router.post("/v1/auth/token", response_model=TokenPair)
def sign_in(form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request,
            services: ServicesDep, session: SessionDep) -> TokenPair:
    """OAuth2 password flow: form fields ``username`` and ``password``."""
    rate = services.limiter.hit("login", client_ip(request),
                                limit=services.settings.login_attempts_per_minute)
    if not rate.allowed:
        raise too_many(f"too many sign-in attempts; try again in {rate.reset_after_s} s", rate)
    user = session.scalar(select(User).where(User.username == form.username))
    if not verify_password(form.password, user.password_hash if user else None):
        raise HTTPException(401, "wrong username or password",
                            headers={"WWW-Authenticate": "Bearer"})
    if not user.is_active:
        raise HTTPException(403, "this account is disabled")
    auth_session = AuthSession(user_id=user.id)
    session.add(auth_session)
    session.flush()
    return issue_tokens(session, services, user, auth_session)


@router.post("/v1/auth/refresh", response_model=TokenPair)
def refresh(body: RefreshRequest, services: ServicesDep, session: SessionDep) -> TokenPair:
    """Trade a refresh token for a new pair. Each refresh token works once; presenting a
    spent one means it was stolen or replayed, so the whole login is revoked."""
    unauthorized = {"WWW-Authenticate": "Bearer"}
    row = session.execute(
        select(RefreshToken, AuthSession, User)
        .join(AuthSession, RefreshToken.session_id == AuthSession.id)
        .join(User, AuthSession.user_id == User.id)
        .where(RefreshToken.token_hash == hash_refresh_token(body.refresh_token))
        .with_for_update(of=RefreshToken)).first()
    if row is None:
        raise HTTPException(401, "unknown refresh token; sign in again", headers=unauthorized)
    token, auth_session, user = row
    if token.used_at is not None:
        if auth_session.revoked_at is None:
            auth_session.revoked_at = utcnow()
            auth_session.revoked_reason = "refresh token reuse"
            session.commit()
        raise HTTPException(401, "refresh token was already used; for safety this login was "
                                 "signed out everywhere, sign in again", headers=unauthorized)
    expires = token.expires_at if token.expires_at.tzinfo else token.expires_at.replace(
        tzinfo=utcnow().tzinfo)
    if auth_session.revoked_at is not None or expires < utcnow() or not user.is_active:
        raise HTTPException(401, "this login has ended; sign in again", headers=unauthorized)
    token.used_at = utcnow()
    return issue_tokens(session, services, user, auth_session)


@router.post("/v1/auth/logout", status_code=204)
def sign_out(login: CurrentLogin, session: SessionDep) -> None:
    _, auth_session = login
    auth_session.revoked_at = utcnow()
    auth_session.revoked_reason = "logout"
    session.commit()
