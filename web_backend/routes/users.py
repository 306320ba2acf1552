"""The signed-in user's own account."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from web_backend.deps import CurrentLogin, CurrentUser, ServicesDep, SessionDep
from web_backend.jobs import limits_for
from web_backend.models import User
from web_backend.routes.auth import revoke_sessions
from web_backend.schemas import PasswordChange, UserDetail, UserOut
from web_backend.security import hash_password, verify_password

router = APIRouter(tags=["users"])


def user_detail(user: User, services: ServicesDep) -> UserDetail:
    return UserDetail(**UserOut.model_validate(user).model_dump(),
                      limits=limits_for(user, services))


@router.get("/v1/users/me", response_model=UserDetail)
def me(user: CurrentUser, services: ServicesDep) -> UserDetail:
    return user_detail(user, services)


@router.put("/v1/users/me/password", status_code=204)
def change_password(body: PasswordChange, login: CurrentLogin, session: SessionDep) -> None:
    """Signs out every other session of this account; this one stays signed in."""
    user, auth_session = login
    if not verify_password(body.current_password, user.password_hash):
        raise HTTPException(403, "current_password is wrong")
    user.password_hash = hash_password(body.new_password)
    revoke_sessions(session, user.id, "password changed", except_session=auth_session.id)
    session.commit()
