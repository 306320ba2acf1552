"""The signed-in user's own account."""

from __future__ import annotations

from fastapi import APIRouter

from web_backend.accounts import keys
from web_backend.accounts import service as accounts
from web_backend.accounts.schemas import PasswordChange, UserDetail
from web_backend.api.deps import CurrentLogin, CurrentUser, ServicesDep, SessionDep
from web_backend.api.openapi import refusals
from web_backend.webhooks.schemas import WebhookSecret

__all__ = ["router"]

router = APIRouter(tags=["users"])


@router.get("/v1/users/me", response_model=UserDetail, responses=refusals(401, 403))
def me(user: CurrentUser, services: ServicesDep, session: SessionDep) -> UserDetail:
    """Your account and its limits."""
    count = keys.key_counts(session, [user.id]).get(user.id, 0)
    session.commit()
    return accounts.user_detail(user, services.settings.limits, api_keys=count)


@router.put("/v1/users/me/password", status_code=204,
            responses=refusals(401, 403, 422, 429, described={
                403: "current_password is wrong, or the account is disabled.",
                429: "Too many password changes."}))
def change_password(body: PasswordChange, login: CurrentLogin, session: SessionDep,
                    services: ServicesDep) -> None:
    """Change your password; your other logins are signed out, this one stays."""
    user, auth_session = login
    accounts.change_password(session, user=user, login=auth_session,
                             current=body.current_password, new=body.new_password,
                             limiter=services.limiter,
                             attempts_per_hour=services.settings.auth.password_changes_per_hour)


@router.post("/v1/users/me/webhook-secret", status_code=201, response_model=WebhookSecret,
             responses=refusals(401, 403))
def new_webhook_secret(user: CurrentUser, session: SessionDep) -> WebhookSecret:
    """Make the secret your webhooks are signed with (shown once; replaces the old one)."""
    return WebhookSecret(secret=accounts.new_webhook_secret(session, user=user))
