"""Registration, sign-in, refresh-token rotation, sign-out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form

from web_backend.accounts import service as accounts
from web_backend.accounts.schemas import RefreshRequest, SignInForm, TokenPair, UserCreate, UserOut
from web_backend.api.deps import CurrentLogin, ServicesDep, SessionDep, limit_per_address
from web_backend.api.openapi import refusals
from web_backend.core.models import User

__all__ = ["router"]

router = APIRouter(tags=["auth"])

_REGISTRATIONS = limit_per_address(
    "register", lambda s: s.auth.registrations_per_hour, per="hour",
    message="too many registrations from this address; try again later")
_SIGN_INS = limit_per_address(
    "login", lambda s: s.auth.login_attempts_per_minute, per="minute",
    message="too many sign-in attempts; try again in {retry} s")


@router.post("/v1/users", status_code=201, response_model=UserOut, dependencies=[_REGISTRATIONS],
             responses=refusals(409, 422, 429, described={
                 409: "That username or email is already registered.",
                 429: "Too many registrations from this address."}))
def register(body: UserCreate, session: SessionDep) -> User:
    """Create an account (limited per client address)."""
    return accounts.register(session, body)


@router.post("/v1/auth/token", response_model=TokenPair, dependencies=[_SIGN_INS],
             responses=refusals(401, 403, 422, 429, described={
                 401: "Wrong username or password.", 403: "This account is disabled.",
                 429: "Too many sign-in attempts from this address or for this account."}))
def token(form: Annotated[SignInForm, Form()], services: ServicesDep,
          session: SessionDep) -> TokenPair:
    """Sign in with the OAuth2 password form: an access token and a refresh token."""
    return accounts.sign_in(session, username=form.username, password=form.password,
                            signing_key=services.signing_key, settings=services.settings.auth,
                            limiter=services.limiter)


@router.post("/v1/auth/refresh", response_model=TokenPair,
             responses=refusals(401, 422))
def refresh(body: RefreshRequest, services: ServicesDep, session: SessionDep) -> TokenPair:
    """Trade a refresh token (each works once) for a new pair."""
    return accounts.refresh(session, refresh_token=body.refresh_token,
                            signing_key=services.signing_key, settings=services.settings.auth)


@router.post("/v1/auth/logout", status_code=204, responses=refusals(401, 403))
def logout(login: CurrentLogin, session: SessionDep) -> None:
    """End this login at once, on every worker."""
    accounts.sign_out(session, login[1])
