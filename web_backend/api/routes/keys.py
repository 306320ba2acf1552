"""The signed-in account's API keys: make one (shown once), list them, revoke one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from web_backend.accounts import keys
from web_backend.accounts.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from web_backend.api.deps import CurrentUser, SessionDep
from web_backend.api.openapi import refusals
from web_backend.core.models import ApiKey

__all__ = ["router"]

router = APIRouter(prefix="/v1/users/me/api-keys", tags=["keys"])

KeyId = Annotated[str, Path(min_length=1, max_length=16, pattern=r"^[0-9A-Za-z]+$",
                            description="A key's id (its public part).")]


def _out(row: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(id=row.id, name=row.name, prefix=f"{keys.KEY_PREFIX}{row.id}",
                     scopes=row.scopes, created_at=row.created_at, expires_at=row.expires_at,
                     last_used_at=row.last_used_at, rate_per_minute=row.rate_per_minute)


@router.post("", name="create", status_code=201, response_model=ApiKeyCreated,
             responses=refusals(401, 403, 409, 422, described={
                 403: "API keys cannot make keys: sign in with the password.",
                 409: "The account has as many keys as it may."}))
def create_key(body: ApiKeyCreate, user: CurrentUser, session: SessionDep) -> ApiKeyCreated:
    """Make an API key for a program; the key is in this answer only."""
    row, key = keys.create_key(session, user=user, name=body.name, scopes=body.scopes,
                               expires_in_days=body.expires_in_days,
                               rate_per_minute=body.rate_per_minute)
    return ApiKeyCreated(**_out(row).model_dump(), key=key)


@router.get("", name="list", response_model=list[ApiKeyOut], responses=refusals(401, 403))
def list_keys(user: CurrentUser, session: SessionDep) -> list[ApiKeyOut]:
    """Your API keys (never their secrets), oldest first."""
    return [_out(row) for row in keys.list_keys(session, user=user)]


@router.delete("/{key_id}", name="revoke", status_code=204,
               responses=refusals(401, 403, 404))
def revoke_key(key_id: KeyId, user: CurrentUser, session: SessionDep) -> None:
    """Revoke a key: it stops working at once, on every server."""
    keys.revoke_key(session, user=user, key_id=key_id)
