"""FastAPI dependencies and their ``Annotated`` aliases: one place for auth and ownership."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from web_backend.accounts.keys import looks_like_key, parse_key, verify_key
from web_backend.core.errors import Forbidden, NotFound, Unauthorized
from web_backend.core.models import ApiKey, AuthSession, Job, User
from web_backend.core.security import AccessClaims, TokenError, verify_link
from web_backend.core.settings import WebSettings
from web_backend.live.login_cache import LoginCache
from web_backend.services import Services

__all__ = ["AccessClaimsDep", "AdminUser", "ClientAddress", "CurrentLogin", "CurrentUser",
           "JobId", "JobsReader", "JobsWriter", "OwnedJob", "ServicesDep", "SessionDep",
           "SettingsDep", "StreamAccess", "StreamAccessDep", "check_live_login", "claims_of",
           "job_by_token_or_link", "limit_per_address", "no_keys", "owned_job",
           "require_scope"]

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/v1/auth/token", auto_error=False)


async def get_services(request: Request) -> Services:
    """Async, like every dependency that does no I/O: a sync one costs a threadpool hop."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> WebSettings:
    return services.settings


SettingsDep = Annotated[WebSettings, Depends(get_settings)]


async def client_address(request: Request) -> str:
    """The client's address, as the server saw it (trusted proxies already applied)."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]


def limit_per_address(name: str, limit: Callable[[WebSettings], int], *, per: str,
                      message: str) -> Any:
    """A dependency that counts one event per call for the client's address.

    ``message`` may use ``{limit}`` and ``{retry}`` (seconds until the next event fits).
    """
    def dependency(services: ServicesDep, address: ClientAddress) -> None:
        allowed = limit(services.settings)
        rate = services.limiter.hit(name, address, limit=allowed, per=per)
        if not rate.allowed:
            raise rate.refusal(message.format(limit=allowed, retry=rate.reset_after_s))

    return Depends(dependency)


_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def get_session(request: Request, services: ServicesDep) -> Iterator[Session]:
    """Requests that change things get a writing session; reads stay concurrent.

    Invariant: a dependency that uses the session commits before it returns. FastAPI
    runs each sync dependency as its own threadpool task, so a request waiting for a
    thread between two of them would otherwise hold a pooled connection (and on SQLite
    a lock) while doing nothing; under load that starves the pool. Committing returns
    the connection, so connections in use never exceed the threads running.
    """
    factory = (services.write_session_factory if request.method in _MUTATING
               else services.session_factory)
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


_SIGN_IN_FIRST = "not signed in: send 'Authorization: Bearer <access token or API key>'"


def _token_claims(token: str, services: Services) -> AccessClaims:
    try:
        return services.tokens.decode(token)
    except TokenError:
        raise Unauthorized("invalid or expired access token; sign in again or refresh") from None


def _verified_key(token: str, services: Services) -> AccessClaims:
    """An API key's claims: malformed ones refused without a read, a key checked before
    from memory, any other by its row (which remembers it)."""
    parse_key(token)  # 401 at once for a mistyped key
    checked = services.key_checks.get(token)
    if checked is None:
        with services.session_factory() as session:
            claims, per_minute = verify_key(session, token)
        services.key_checks.put(token, claims, per_minute)
    else:
        claims, per_minute = checked
    services.key_usage.touch(claims.key_id or "")
    return replace(claims, per_minute=per_minute)


def _claims(token: str | None, services: Services) -> AccessClaims:
    """Sync: for dependencies that already run on a worker thread."""
    if not token:
        raise Unauthorized(_SIGN_IN_FIRST)
    if looks_like_key(token):
        return _verified_key(token, services)
    return _token_claims(token, services)


async def claims_of(token: str | None, services: Services) -> AccessClaims:
    """Async: an access token's signature on the loop; a key not seen before is read on a
    worker thread (once: then it is remembered)."""
    if not token:
        raise Unauthorized(_SIGN_IN_FIRST)
    if looks_like_key(token):
        if services.key_checks.get(token) is None:
            return await run_in_threadpool(_verified_key, token, services)
        return _verified_key(token, services)
    return _token_claims(token, services)


def require_scope(claims: AccessClaims, scope: str) -> None:
    """An API key acts only within its scopes (a login may do all its account may)."""
    if claims.scopes is not None and scope not in claims.scopes:
        raise Forbidden(f"this API key may not do that (it needs the scope {scope!r}; its "
                        f"scopes are {', '.join(sorted(claims.scopes)) or 'none'})")


def no_keys(claims: AccessClaims) -> None:
    """Account and administration routes take a signed-in login, never an API key."""
    if claims.key_id is not None:
        raise Forbidden("an API key cannot change an account or administer one; sign in "
                        "with the account's password")


async def get_access_claims(token: Annotated[str | None, Depends(oauth2_scheme)],
                            services: ServicesDep) -> AccessClaims:
    """The bearer credential's claims, checked by signature (an access token) or hash (an
    API key) only: the route checks the login itself, in the same query as what it reads
    (:func:`owned_job`)."""
    return await claims_of(token, services)


AccessClaimsDep = Annotated[AccessClaims, Depends(get_access_claims)]


def _login_row(session: Session, claims: AccessClaims) -> Any:
    """(User, its login: an AuthSession, or an ApiKey) of live credentials, or None."""
    if claims.key_id is not None:
        return session.execute(
            select(User, ApiKey).join(ApiKey, ApiKey.user_id == User.id)
            .where(User.id == claims.user_id, ApiKey.id == claims.key_id)).first()
    return session.execute(
        select(User, AuthSession).join(AuthSession, AuthSession.user_id == User.id)
        .where(User.id == claims.user_id, AuthSession.id == claims.session_id)).first()


def _check_row(claims: AccessClaims, row: Any) -> Any:
    """``row`` if its login (or key) is live and its account active; else refused."""
    if claims.key_id is not None:
        if row is None or row[1].revoked_at is not None:
            raise Unauthorized("this API key was revoked")
        if int(time.time()) >= claims.expires_at:
            raise Unauthorized("this API key has expired; make a new one")
    elif row is None or row[1].revoked_at is not None:
        raise Unauthorized("this session has ended; sign in again")
    if not row[0].is_active:
        raise Unauthorized("this account is disabled")
    return row


def owned_job(session: Session, claims: AccessClaims, job_id: str,
              logins: LoginCache | None = None) -> Job:
    """The job, if the login (or key) is live, its account active and the job its own:
    all in one query (a status read is the most frequent request; it pays for one round
    trip). A live login is remembered in ``logins``."""
    generation = logins.generation() if logins is not None else 0
    login = ApiKey if claims.key_id is not None else AuthSession
    row = session.execute(
        select(User, login, Job)
        .select_from(login).join(User, User.id == login.user_id)
        .outerjoin(Job, and_(Job.id == job_id, Job.user_id == User.id))
        .where(login.id == (claims.key_id or claims.session_id),
               User.id == claims.user_id)).first()
    row = _check_row(claims, row)
    if logins is not None:
        logins.remember(claims.session_id, claims.user_id, generation)
    if row[2] is None:  # another user's job answers exactly like a missing one
        raise NotFound(f"no job {job_id}")
    job: Job = row[2]
    return job


def _login(claims: AccessClaims, session: Session) -> tuple[User, AuthSession | ApiKey]:
    row = _login_row(session, claims)
    session.commit()  # see get_session: never return from a dependency inside a transaction
    row = _check_row(claims, row)
    return row[0], row[1]


def get_current_login(token: Annotated[str | None, Depends(oauth2_scheme)],
                      services: ServicesDep, session: SessionDep) -> tuple[User, AuthSession]:
    """A signed-in login (account routes: never an API key)."""
    claims = _claims(token, services)
    no_keys(claims)
    user, login = _login(claims, session)
    if not isinstance(login, AuthSession):  # pragma: no cover (no_keys said so)
        raise Forbidden("sign in with the account's password")
    return user, login


CurrentLogin = Annotated[tuple[User, AuthSession], Depends(get_current_login)]


async def get_current_user(login: CurrentLogin) -> User:
    return login[0]


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("administrators only")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


def _user_with(scope: str) -> Any:
    """The account a login or an API key with ``scope`` acts for (job routes)."""
    def dependency(token: Annotated[str | None, Depends(oauth2_scheme)],
                   services: ServicesDep, session: SessionDep) -> User:
        claims = _claims(token, services)
        require_scope(claims, scope)
        return _login(claims, session)[0]

    return Depends(dependency)


JobsReader = Annotated[User, _user_with("jobs:read")]
JobsWriter = Annotated[User, _user_with("jobs:write")]


JobId = Annotated[str, Path(min_length=1, max_length=64, description="A job's id.")]


def _owned(job_id: str, user: User, session: Session) -> Job:
    """Another user's job answers exactly like a missing one: 404."""
    job = session.get(Job, job_id)
    session.commit()  # see get_session
    if job is None or job.user_id != user.id:
        raise NotFound(f"no job {job_id}")
    return job


def get_owned_job(job_id: JobId, user: JobsWriter, session: SessionDep) -> Job:
    """A job of the caller's that it may change (a login, or a key with jobs:write)."""
    return _owned(job_id, user, session)


OwnedJob = Annotated[Job, Depends(get_owned_job)]


def job_by_token_or_link(kind: str) -> Any:
    """Owner's bearer token, or a signed link (``?exp=&sig=``) for <img> tags and sharing.

    A link works only while its owner's account is active. When the credential
    expires is kept in ``request.state.credential_expires_at``: what the request hands
    out (links in an event stream) must not outlive it.
    """

    def dependency(request: Request, job_id: JobId, services: ServicesDep, session: SessionDep,
                   token: Annotated[str | None, Depends(oauth2_scheme)] = None,
                   exp: int | None = None, sig: str | None = None) -> Job:
        if sig is not None and exp is not None:
            if not verify_link(services.signing_key, job_id, kind, exp, sig):
                raise Forbidden("this link is invalid or has expired")
            job = session.get(Job, job_id)
            owner = session.get(User, job.user_id) if job is not None else None
            session.commit()
            if job is None:
                raise NotFound(f"no job {job_id}")
            if owner is None or not owner.is_active:
                raise Forbidden("this link is invalid or has expired")
            request.state.credential_expires_at = exp
            return job
        claims = _claims(token, services)
        require_scope(claims, "jobs:read")
        user, _ = _login(claims, session)
        request.state.credential_expires_at = claims.expires_at
        return _owned(job_id, user, session)

    return Depends(dependency)


@dataclass(frozen=True)
class StreamAccess:
    """Who opens a job's event stream, and until when (links it hands out expire then too).

    Decided in two halves so that a crowd opening streams costs no query each: the
    credential here (a signed link is an HMAC, no database), the job's existence, owner
    and owner's standing from the change feed's fresh read of the job (batched).
    """

    job_id: str
    expires_at: int            # the credential's end: the stream ends then
    user_id: int | None        # signed in as; None for a signed link (anyone holding it)
    claims: AccessClaims | None = None  # the login that opened it, checked again when it changes

    def check(self, owner_id: int, owner_active: bool) -> None:
        """Raises what the other job routes would for the job's owner and standing."""
        if self.user_id is not None and owner_id != self.user_id:
            raise NotFound(f"no job {self.job_id}")
        if not owner_active:
            raise (Forbidden("this link is invalid or has expired") if self.user_id is None
                   else Unauthorized("this account is disabled"))


def _check_login(services: Services, claims: AccessClaims) -> None:
    generation = services.logins.generation()
    with services.session_factory() as session:
        _login(claims, session)
    services.logins.remember(claims.session_id, claims.user_id, generation)


async def check_live_login(services: Services, claims: AccessClaims) -> None:
    """Refuses an ended login or a disabled account: from this process's login cache
    when it has the login, else with one query (which fills the cache)."""
    if not services.logins.live(claims.session_id, claims.user_id):
        await run_in_threadpool(_check_login, services, claims)


async def get_stream_access(job_id: JobId, services: ServicesDep,
                            token: Annotated[str | None, Depends(oauth2_scheme)] = None,
                            exp: int | None = None, sig: str | None = None) -> StreamAccess:
    if sig is not None and exp is not None:
        if not verify_link(services.signing_key, job_id, "events", exp, sig):
            raise Forbidden("this link is invalid or has expired")
        return StreamAccess(job_id, exp, None)
    claims = await claims_of(token, services)
    require_scope(claims, "jobs:read")
    await check_live_login(services, claims)
    return StreamAccess(job_id, claims.expires_at, claims.user_id, claims)


StreamAccessDep = Annotated[StreamAccess, Depends(get_stream_access)]
