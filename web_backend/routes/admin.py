"""Administration: users, their access and their limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import select

from web_backend.deps import AdminUser, ServicesDep, SessionDep
from web_backend.models import User
from web_backend.routes.auth import revoke_sessions
from web_backend.routes.users import user_detail
from web_backend.schemas import LimitsUpdate, UserDetail

router = APIRouter(prefix="/v1/admin", tags=["admin"])

UserId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A user's id.")]


def _user(session: SessionDep, user_id: UserId) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(404, f"no user {user_id}")
    return user


@router.get("/users", response_model=list[UserDetail])
def list_users(_: AdminUser, session: SessionDep, services: ServicesDep,
               offset: int = Query(0, ge=0, le=10**9), limit: int = Query(50, ge=1, le=500),
               ) -> list[UserDetail]:
    users = session.scalars(select(User).order_by(User.id).offset(offset).limit(limit))
    return [user_detail(u, services) for u in users]


@router.post("/users/{user_id}/disable", response_model=UserDetail)
def disable_user(user_id: UserId, admin: AdminUser, session: SessionDep,
                 services: ServicesDep) -> UserDetail:
    """Their tokens stop working on the next request (sessions are checked every time)."""
    user = _user(session, user_id)
    if user.id == admin.id:
        raise HTTPException(409, "you cannot disable your own account")
    user.is_active = False
    revoke_sessions(session, user.id, "disabled by an administrator")
    session.commit()
    return user_detail(user, services)


@router.post("/users/{user_id}/enable", response_model=UserDetail)
def enable_user(user_id: UserId, _: AdminUser, session: SessionDep,
                services: ServicesDep) -> UserDetail:
    user = _user(session, user_id)
    user.is_active = True
    session.commit()
    return user_detail(user, services)


@router.put("/users/{user_id}/limits", response_model=UserDetail)
def set_limits(user_id: UserId, body: LimitsUpdate, _: AdminUser, session: SessionDep,
               services: ServicesDep) -> UserDetail:
    user = _user(session, user_id)
    for name, value in body.model_dump().items():
        setattr(user, name, value)
    session.commit()
    return user_detail(user, services)
