"""The signed-in user's own account."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from web_backend.accounts import keys
from web_backend.accounts import service as accounts
from web_backend.accounts.schemas import AccountDeletion, PasswordChange, UserDetail
from web_backend.api.deps import CurrentLogin, CurrentUser, ServicesDep, SessionDep
from web_backend.api.openapi import refusals
from web_backend.storage import refs
from web_backend.webhooks.schemas import WebhookSecret

__all__ = ["router"]

router = APIRouter(tags=["users"])


@router.get("/v1/users/me", response_model=UserDetail, responses=refusals(401, 403))
def me(user: CurrentUser, services: ServicesDep, session: SessionDep) -> UserDetail:
    """Your account, its limits, and the storage your pictures take."""
    count = keys.key_counts(session, [user.id]).get(user.id, 0)
    used = refs.usage_by_user(session, [user.id])[user.id]
    session.commit()
    return accounts.user_detail(user, services.settings.limits, api_keys=count,
                                storage_bytes=used)


@router.delete("/v1/users/me", status_code=204, response_class=Response,
               responses=refusals(401, 403, 409, 422, 429, 503, described={
                   403: "password is wrong, or an API key was used.",
                   409: "The only administrator cannot delete their account.",
                   429: "Too many attempts."}))
async def delete_me(body: AccountDeletion, user: CurrentUser, session: SessionDep,
                    services: ServicesDep) -> Response:
    """Delete your account with everything of yours: jobs (running ones stop), pictures,
    previews and image prompts, logins, API keys, webhook secret and pending deliveries.
    Your tokens and links stop working at once, on every server."""
    released = await run_in_threadpool(
        accounts.delete_account, session, user=user, password=body.password,
        limiter=services.limiter,
        attempts_per_hour=services.settings.auth.password_changes_per_hour)
    await services.blobs.collect(released)
    return Response(status_code=204)


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
