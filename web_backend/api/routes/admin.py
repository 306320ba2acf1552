"""Administration: users, their access and their limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from web_backend.accounts import keys
from web_backend.accounts import service as accounts
from web_backend.accounts.schemas import LimitsUpdate, UserDetail
from web_backend.api.deps import AdminUser, ServicesDep, SessionDep
from web_backend.api.openapi import refusals
from web_backend.core.errors import NotFound
from web_backend.core.models import User
from web_backend.storage import refs

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["admin"])

UserId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A user's id.")]


def get_user(_: AdminUser, session: SessionDep, user_id: UserId) -> User:
    """The user a route acts on; only after the caller is known to be an administrator,
    so nobody else can probe which ids exist."""
    user = session.get(User, user_id)
    session.commit()  # see deps.get_session
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


TargetUser = Annotated[User, Depends(get_user)]


@router.get("/users", response_model=list[UserDetail], responses=refusals(401, 403))
def list_users(_: AdminUser, session: SessionDep, services: ServicesDep,
               offset: int = Query(0, ge=0, le=10**9), limit: int = Query(50, ge=1, le=500),
               ) -> list[UserDetail]:
    """Every account, by id, with its API keys and the storage its pictures take."""
    users = list(session.scalars(select(User).order_by(User.id).offset(offset).limit(limit)))
    ids = [user.id for user in users]
    counts = keys.key_counts(session, ids)
    used = refs.usage_by_user(session, ids)
    session.commit()
    return [accounts.user_detail(u, services.settings.limits, api_keys=counts.get(u.id, 0),
                                 storage_bytes=used[u.id]) for u in users]


@router.delete("/users/{user_id}", status_code=204, response_class=Response,
               responses=refusals(401, 403, 404, 409, 503, described={
                   409: "Your own account (use DELETE /v1/users/me), or the only "
                        "administrator."}))
async def delete_user(user: TargetUser, admin: AdminUser, session: SessionDep,
                      services: ServicesDep) -> Response:
    """Delete an account with everything of theirs (as DELETE /v1/users/me does); their
    tokens and links stop working at once, on every server."""
    released = await run_in_threadpool(accounts.delete_account, session, user=user, by=admin)
    await services.blobs.collect(released)
    return Response(status_code=204)


@router.post("/users/{user_id}/disable", response_model=UserDetail,
             responses=refusals(401, 403, 404, 409, described={
                 409: "You cannot disable your own account."}))
def disable_user(user: TargetUser, admin: AdminUser, session: SessionDep,
                 services: ServicesDep) -> UserDetail:
    """Disable an account; its tokens stop working on the next request."""
    accounts.set_active(session, user=user, active=False, by=admin)
    return accounts.user_detail(user, services.settings.limits)


@router.post("/users/{user_id}/enable", response_model=UserDetail,
             responses=refusals(401, 403, 404))
def enable_user(user: TargetUser, admin: AdminUser, session: SessionDep,
                services: ServicesDep) -> UserDetail:
    """Enable an account again (its owner signs in anew)."""
    accounts.set_active(session, user=user, active=True, by=admin)
    return accounts.user_detail(user, services.settings.limits)


@router.put("/users/{user_id}/limits", response_model=UserDetail,
             responses=refusals(401, 403, 404, 422))
def set_limits(user: TargetUser, body: LimitsUpdate, _: AdminUser, session: SessionDep,
               services: ServicesDep) -> UserDetail:
    """Override a user's limits; null resets one to the service default."""
    accounts.set_limits(session, user=user, limits=body)
    return accounts.user_detail(user, services.settings.limits)
